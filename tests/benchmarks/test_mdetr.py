"""MDETR grounding jsons (GoldG, Flickr30k, RefCOCO): parsing, views, malformed records."""

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from glip_d2.data import GroundingDatasetMapper
from glip_d2.data.datasets import DatasetFormatError, register_mdetr
from glip_d2.evaluation.phrases import phrase_boxes
from tests.benchmarks.helpers import write_json

CAPTION0 = "a man with a dog and the man 's hat"  # "a man" 0-5, "a dog" 11-16, "the man" 21-28
B1, B2A, B2B = [10, 10, 30, 40], [50, 50, 10, 10], [70, 60, 20, 20]  # XYWH


def flickr_json():
    """Two sentences of Flickr image 100, as MDETR's final_flickr_separateGT_*.json writes them:
    entity 1 ("a man" / "the man") has one box, entity 2 ("a dog", "two dogs") two."""
    image = {
        "file_name": "100.jpg",
        "height": 100,
        "width": 100,
        "dataset_name": "flickr",
        "original_img_id": 100,
        "tokens_negative": [[0, 8]],
    }
    return {
        "images": [
            dict(
                image,
                id=0,
                caption=CAPTION0,
                sentence_id=0,
                tokens_positive_eval=[[[0, 5]], [[11, 16]], [[21, 28]]],
            ),
            dict(image, id=1, caption="two dogs", sentence_id=1, tokens_positive_eval=[[[0, 8]]]),
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 0,
                "bbox": B1,
                "category_id": 1,
                "iscrowd": 0,
                "tokens_positive": [[0, 5], [21, 28]],
            },
            {
                "id": 2,
                "image_id": 0,
                "bbox": B2A,
                "category_id": 1,
                "iscrowd": 0,
                "tokens_positive": [[11, 16]],
            },
            {
                "id": 3,
                "image_id": 0,
                "bbox": B2B,
                "category_id": 1,
                "iscrowd": 0,
                "tokens_positive": [[11, 16]],
            },
            {
                "id": 4,
                "image_id": 1,
                "bbox": B2A,
                "category_id": 1,
                "iscrowd": 0,
                "tokens_positive": [[0, 8]],
            },
            {
                "id": 5,
                "image_id": 1,
                "bbox": B2B,
                "category_id": 1,
                "iscrowd": 0,
                "tokens_positive": [[0, 8]],
            },
        ],
        "categories": [{"id": 1, "name": "object"}],
    }


def refexp_json():
    """Three referring expressions (MDETR finetune_refcoco_*.json); the last has no root span."""
    images, annos = [], []
    for i, (caption, span, box) in enumerate(
        [
            ("man on the left", [[0, 3]], [0, 0, 20, 40]),
            ("red car", [[4, 7]], [50, 50, 30, 20]),
            ("the one behind", [], [10, 60, 20, 20]),
        ]
    ):
        images.append(
            {
                "id": i,
                "file_name": f"COCO_train2014_{i:012d}.jpg",
                "height": 100,
                "width": 100,
                "caption": caption,
                "original_id": 500 + i,
                "dataset_name": "refcoco",
                "tokens_negative": [],
            }
        )
        annos.append(
            {
                "id": 10 + i,
                "image_id": i,
                "bbox": box,
                "category_id": 3,
                "iscrowd": 0,
                "tokens_positive": span,
                "original_id": 900 + i,
            }
        )
    return {"images": images, "annotations": annos, "categories": [{"id": 3, "name": "car"}]}


def goldg_json():
    return {
        "images": [
            {
                "id": 7,
                "file_name": "2354786.jpg",
                "height": 100,
                "width": 100,
                "caption": "the cat on a mat",
                "data_source": "vg",
                "dataset_name": "gqa",
            },
            {
                "id": 8,
                "file_name": "COCO_train2014_000000000009.jpg",
                "height": 100,
                "width": 100,
                "caption": "a cat",
                "data_source": "coco",
                "dataset_name": "refcoco",
            },
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "bbox": [1, 1, 5, 5],
                "tokens_positive": [[4, 7]],
                "phrase_ids": 0,
                "category_id": 1,
            },
            {
                "id": 2,
                "image_id": 7,
                "bbox": [6, 6, 5, 5],
                "tokens_positive": [[11, 16]],
                "phrase_ids": 1,
                "category_id": 1,
            },
            {
                "id": 3,
                "image_id": 8,
                "bbox": [0, 0, 9, 9],
                "tokens_positive": [[2, 5]],
                "phrase_ids": 0,
                "category_id": 1,
            },
        ],
        "categories": [{"id": 1, "name": "object"}],
    }


def test_mdetr_goldg_keeps_captions_spans_phrase_ids_and_sources(tmp_path, names):
    name = names("mdetr")
    register_mdetr(
        name,
        write_json(tmp_path / "final_mixed_train_no_coco.json", goldg_json()),
        str(tmp_path / "gqa"),
        image_roots={"coco": str(tmp_path / "coco")},
    )
    assert MetadataCatalog.get(name).evaluator_type == "grounding"
    d0, d1 = DatasetCatalog.get(name)
    assert d0["file_name"] == str(tmp_path / "gqa" / "2354786.jpg")
    assert d1["file_name"] == str(tmp_path / "coco" / "COCO_train2014_000000000009.jpg")
    assert d0["caption"] == "the cat on a mat" and d0["source_dataset"] == "gqa"
    assert d0["data_source"] == "vg" and d0["dataset_name"] == name and d0["image_id"] == 7
    assert d0["annotations"] == [
        {
            "bbox": [1.0, 1.0, 5.0, 5.0],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 1,
            "iscrowd": 0,
            "tokens_positive": [[4, 7]],
            "phrase_id": 0,
        },
        {
            "bbox": [6.0, 6.0, 5.0, 5.0],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 1,
            "iscrowd": 0,
            "tokens_positive": [[11, 16]],
            "phrase_id": 1,
        },
    ]


def test_mdetr_flickr_training_view_is_the_json(tmp_path, names):
    name = names("flickr")
    register_mdetr(name, write_json(tmp_path / "f.json", flickr_json()), str(tmp_path))
    d0 = DatasetCatalog.get(name)[0]
    assert d0["tokens_positive_eval"] == [[[0, 5]], [[11, 16]], [[21, 28]]]
    assert (d0["original_img_id"], d0["sentence_id"]) == (100, 0)
    assert [a["tokens_positive"] for a in d0["annotations"]] == [
        [[0, 5], [21, 28]],
        [[11, 16]],
        [[11, 16]],
    ]


def test_mdetr_flickr_phrases_view_asks_the_evaluated_phrases_in_order(tmp_path, names):
    name = names("flickr")
    register_mdetr(
        name, write_json(tmp_path / "f.json", flickr_json()), str(tmp_path), view="phrases"
    )
    assert MetadataCatalog.get(name).evaluator_type == "flickr"
    d0 = DatasetCatalog.get(name)[0]
    assert [(a["phrase_id"], a["tokens_positive"], a["bbox"]) for a in d0["annotations"]] == [
        (0, [[0, 5]], B1),
        (1, [[11, 16]], B2A),
        (1, [[11, 16]], B2B),
        (2, [[21, 28]], B1),
    ]
    # A sentence none of whose phrases has a box is not evaluated (MDETR skips it).
    data = flickr_json()
    data["images"].append(dict(data["images"][1], id=2, sentence_id=2, tokens_positive_eval=[]))
    other = names("flickr")
    register_mdetr(other, write_json(tmp_path / "g.json", data), str(tmp_path), view="phrases")
    assert [d["image_id"] for d in DatasetCatalog.get(other)] == [0, 1]
    # The mapper numbers the phrases exactly as tokens_positive_eval, and so does the evaluator.
    Image.fromarray(np.zeros((100, 100, 3), dtype=np.uint8)).save(tmp_path / "100.jpg")
    mapper = GroundingDatasetMapper(False, augmentations=[], image_format="BGR")
    assert mapper(d0)["phrase_spans"] == d0["tokens_positive_eval"]
    gt = phrase_boxes(d0)
    assert [g.tolist() for g in gt] == [
        [[10, 10, 40, 50]],
        [[50, 50, 60, 60], [70, 60, 90, 80]],
        [[10, 10, 40, 50]],
    ]


def test_mdetr_refcoco_view_makes_the_expression_phrase_zero(tmp_path, names):
    name = names("refcoco")
    register_mdetr(
        name, write_json(tmp_path / "r.json", refexp_json()), str(tmp_path), view="refexp"
    )
    assert MetadataCatalog.get(name).evaluator_type == "refcoco"
    dicts = DatasetCatalog.get(name)
    assert [d["annotations"][0]["tokens_positive"] for d in dicts] == [
        [[0, 3]],
        [[4, 7]],
        [[0, 14]],  # no root span: the whole expression
    ]
    assert all(d["annotations"][0]["phrase_id"] == 0 for d in dicts)
    assert dicts[0]["original_id"] == 500 and dicts[0]["source_dataset"] == "refcoco"


def _bad(mutate):
    data = flickr_json()
    mutate(data)
    return data


@pytest.mark.parametrize(
    "data, message",
    [
        (_bad(lambda d: d["images"][1].pop("caption")), "image #1 (id 1) lacks ['caption']"),
        (_bad(lambda d: d["images"][1].update(caption="  ")), "empty caption"),
        (
            _bad(lambda d: d["annotations"][4].update(tokens_positive=[[0, 30]])),
            "annotation #4 (id 5): Span [0, 30) lies outside its caption",
        ),
        (
            _bad(lambda d: d["annotations"][0].update(bbox=[0, 0, 5, -1])),
            "annotation #0 (id 1): bbox [0, 0, 5, -1] (xywh) has a negative",
        ),
        (_bad(lambda d: d["annotations"][2].update(image_id=42)), "image_id 42"),
        (
            _bad(lambda d: d["annotations"][3].pop("tokens_positive")),
            "annotation #3 (id 4) lacks ['tokens_positive']",
        ),
        (
            _bad(lambda d: d["images"][0].update(tokens_positive_eval=[[[30, 40]]])),
            "tokens_positive_eval #0: Span [30, 40) lies outside",
        ),
        (_bad(lambda d: d["images"][1].update(id=0)), "image id 0 appears twice"),
        (
            _bad(lambda d: d["annotations"][1].update(iscrowd=None)),
            "annotation #1 (id 2): iscrowd None is not an integer",
        ),
        (_bad(lambda d: d["annotations"][1].update(iscrowd=2)), "iscrowd 2 is not one of [0, 1]"),
        (
            _bad(lambda d: d["annotations"][2].update(phrase_ids=[0])),
            "annotation #2 (id 3): phrase_ids [0] is not an integer",
        ),
        (_bad(lambda d: d["annotations"][2].update(phrase_ids="x")), "phrase_ids 'x' is not an"),
        (
            _bad(lambda d: d["annotations"][0].update(tokens_positive=[[0, float("inf")]])),
            "annotation #0 (id 1): Span [0, inf] is not a [start, end) pair of integers",
        ),
    ],
)
def test_mdetr_malformed_records_are_rejected(tmp_path, names, data, message):
    name = names("mdetr")
    register_mdetr(name, write_json(tmp_path / "bad.json", data), str(tmp_path))
    with pytest.raises(DatasetFormatError) as error:
        DatasetCatalog.get(name)
    assert message in str(error.value) and "bad.json" in str(error.value)


def test_mdetr_phrases_view_rejects_a_phrase_without_box(tmp_path, names):
    data = flickr_json()
    data["annotations"][1]["tokens_positive"] = [[12, 16]]
    data["annotations"][2]["tokens_positive"] = [[12, 16]]
    name = names("flickr")
    register_mdetr(name, write_json(tmp_path / "f.json", data), str(tmp_path), view="phrases")
    with pytest.raises(DatasetFormatError, match=r"image 0, evaluated phrase #1 .*names no box"):
        DatasetCatalog.get(name)
    del data["images"][0]["tokens_positive_eval"]
    other = names("flickr")
    register_mdetr(other, write_json(tmp_path / "g.json", data), str(tmp_path), view="phrases")
    with pytest.raises(DatasetFormatError, match="has no tokens_positive_eval"):
        DatasetCatalog.get(other)


def test_mdetr_unknown_view_is_refused(tmp_path, names):
    with pytest.raises(ValueError, match="Unknown view 'eval'"):
        register_mdetr(names("mdetr"), "x.json", str(tmp_path), view="eval")
