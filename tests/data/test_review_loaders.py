"""Review of the dataset loaders against the official formats (MDETR, ODVG, COCO, LVIS)."""

import json

import pytest

from glip_d2.data.datasets._utils import DatasetFormatError


@pytest.fixture(autouse=True)
def _no_parse_cache(monkeypatch):
    monkeypatch.setenv("GLIP_D2_CACHE_DIR", "")


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


# ------------------------------------------------ MDETR's Flickr jsons write sizes as strings


def _flickr_json(height, width):
    # As MDETR's scripts/pre-training/flickr_combined.py writes them: the sizes come from the
    # Flickr30k Entities xml through xmltodict, so they are strings.
    caption = "2 wet boys in blue swimming suits"
    return {
        "images": [
            {
                "file_name": "4886839805.jpg", "height": height, "width": width, "id": 27,
                "caption": caption, "dataset_name": "flickr", "tokens_negative": [[0, 33]],
                "sentence_id": 2, "original_img_id": 4886839805,
                "tokens_positive_eval": [[[0, 10]], [[14, 33]]],
            }
        ],
        "annotations": [
            {"area": 4.0, "iscrowd": 0, "image_id": 27, "category_id": 1, "id": 0,
             "bbox": [1, 1, 2, 2], "tokens_positive": [[0, 10]]},
            {"area": 4.0, "iscrowd": 0, "image_id": 27, "category_id": 1, "id": 1,
             "bbox": [3, 3, 2, 2], "tokens_positive": [[14, 33]]},
        ],
        "categories": [{"supercategory": "object", "id": 1, "name": "object"}],
    }


@pytest.mark.parametrize("view", ["train", "phrases"])
def test_mdetr_flickr_json_with_string_sizes_loads(tmp_path, view):
    from glip_d2.data.datasets.mdetr import load_mdetr_json
    from glip_d2.data.validate import check_training_records

    json_file = _write(tmp_path / "final_flickr_separateGT_val.json", _flickr_json("500", "371"))
    (tmp_path / "4886839805.jpg").write_bytes(b"")
    dicts = load_mdetr_json(json_file, str(tmp_path), view=view)
    assert [(d["height"], d["width"]) for d in dicts] == [(500, 371)]
    assert type(dicts[0]["height"]) is int and type(dicts[0]["width"]) is int
    assert check_training_records(dicts, "test", level="quick") == dicts


@pytest.mark.parametrize("height", ["500.5", "-3", " 500", "five", "", True, None])
def test_mdetr_sizes_that_are_no_integer_are_still_refused(tmp_path, height):
    from glip_d2.data.datasets.mdetr import parse_mdetr_json

    json_file = _write(tmp_path / "a.json", _flickr_json(height, "371"))
    with pytest.raises(DatasetFormatError, match=r"a\.json: image #0 \(id 27\).*height"):
        parse_mdetr_json(json_file)


# ------------------------------------------------ an RLE must be of its image's size


def _coco_json(segmentation, height=4, width=6):
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "height": height, "width": width}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "iscrowd": 1,
             "segmentation": segmentation}
        ],
        "categories": [{"id": 1, "name": "dog"}],
    }


def test_coco_rle_of_the_image_size_is_kept(tmp_path):
    from glip_d2.data.datasets.coco_json import load_detection_json

    rle = {"size": [4, 6], "counts": [0, 2, 2, 2, 18]}  # uncompressed, as COCO's crowd regions
    dicts = load_detection_json(_write(tmp_path / "a.json", _coco_json(rle)), str(tmp_path))
    segm = dicts[0]["annotations"][0]["segmentation"]
    assert segm["size"] == [4, 6] and isinstance(segm["counts"], bytes)  # compressed


@pytest.mark.parametrize("size", [[6, 4], [4, 7], [8, 12]])
def test_coco_rle_of_another_size_than_its_image_is_named(tmp_path, size):
    """The mapper decodes the RLE and transforms it with the image's transforms: a mask of another
    size failed there with a bare AssertionError (or, with a flip only, became a mask of the
    wrong size), in a data-loader worker, naming no file or record."""
    from glip_d2.data.datasets.coco_json import parse_detection_json

    rle = {"size": size, "counts": [0, size[0] * size[1]]}
    json_file = _write(tmp_path / "a.json", _coco_json(rle))
    with pytest.raises(
        DatasetFormatError, match=r"a\.json: annotation #0 \(id 7\).*size.*\[4, 6\]"
    ):
        parse_detection_json(json_file)


# ------------------------------------------------ DATASETS.CUSTOM: a name keeps its format


def test_custom_entry_registered_before_in_another_format_is_refused(tmp_path, monkeypatch):
    """An entry is skipped when its name was registered before from the same files; with the
    same files but another format ("lvis" after "coco"), the old registration (COCOEvaluator,
    COCO paths) was silently kept."""
    from detectron2.config import get_cfg
    from detectron2.data import MetadataCatalog

    from glip_d2.config import add_glip_config
    from glip_d2.data.datasets import register_datasets_from_config
    from tests.conftest import forget

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    data = _coco_json([[0, 0, 2, 0, 2, 2]])
    data["annotations"][0]["iscrowd"] = 0
    _write(tmp_path / "train.json", data)
    cfg = get_cfg()
    add_glip_config(cfg)
    name = "review_loaders_custom_format"
    cfg.DATASETS.CUSTOM = [[name, "train.json", "."]]
    try:
        assert register_datasets_from_config(cfg) == [name]
        assert register_datasets_from_config(cfg) == []  # same entry: idempotent
        cfg.DATASETS.CUSTOM = [[name, "train.json", ".", "coco"]]  # "coco" is the default
        assert register_datasets_from_config(cfg) == []
        cfg.DATASETS.CUSTOM = [[name, "train.json", ".", "lvis"]]
        with pytest.raises(ValueError, match=r"already registered.*format 'coco'.*pick another"):
            register_datasets_from_config(cfg)
        assert MetadataCatalog.get(name).evaluator_type == "coco"
    finally:
        forget(name)
