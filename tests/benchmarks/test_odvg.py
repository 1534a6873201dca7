"""ODVG jsonl (Grounding DINO): reading, writing, round trip, malformed lines."""

import json

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from glip_d2.data.datasets import (
    DatasetFormatError,
    load_odvg_jsonl,
    read_label_map,
    register_odvg,
    write_label_map,
    write_odvg_jsonl,
)

OD_LINE = {
    "filename": "a.jpg",
    "height": 50,
    "width": 60,
    "detection": {
        "instances": [
            {"bbox": [1, 2, 11, 22], "label": 1, "category": "cat"},
            {"bbox": [5, 5, 6, 9], "label": 0, "category": "dog"},
        ]
    },
}
VG_LINE = {
    "filename": "sub/b.jpg",
    "height": 40,
    "width": 30,
    "grounding": {
        "caption": "a dog chases a red ball",
        "regions": [
            {"bbox": [0, 0, 10, 10], "phrase": "a dog"},  # span found in the caption
            {"bbox": [10, 10, 20, 30], "phrase": "red ball", "tokens_positive": [[15, 23]]},
        ],
    },
}


def _write_lines(path, lines):
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )
    return str(path)


def test_odvg_detection_and_grounding_lines_become_dicts(tmp_path, names):
    jsonl = _write_lines(tmp_path / "data.jsonl", [OD_LINE, "", VG_LINE])
    name = names("odvg")
    register_odvg(name, jsonl, str(tmp_path / "images"))
    od, vg = DatasetCatalog.get(name)
    assert MetadataCatalog.get(name).thing_classes == ["dog", "cat"]  # from the lines
    assert od == {
        "file_name": str(tmp_path / "images" / "a.jpg"),
        "height": 50,
        "width": 60,
        "image_id": 1,
        "dataset_name": name,
        "annotations": [
            {
                "bbox": [1.0, 2.0, 11.0, 22.0],
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": 1,
                "iscrowd": 0,
            },
            {
                "bbox": [5.0, 5.0, 6.0, 9.0],
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": 0,
                "iscrowd": 0,
            },
        ],
    }
    assert vg["image_id"] == 3 and vg["caption"] == "a dog chases a red ball"
    assert vg["file_name"] == str(tmp_path / "images" / "sub" / "b.jpg")
    assert [a["tokens_positive"] for a in vg["annotations"]] == [[[0, 5]], [[15, 23]]]


def test_odvg_label_map_names_the_classes(tmp_path, names):
    label_map = tmp_path / "label_map.json"
    write_label_map(["dog", "cat", "bird"], str(label_map))
    assert read_label_map(str(label_map)) == ["dog", "cat", "bird"]
    name = names("odvg")
    register_odvg(
        name, _write_lines(tmp_path / "d.jsonl", [OD_LINE]), str(tmp_path), str(label_map)
    )
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["dog", "cat", "bird"] and meta.evaluator_type == "coco"
    assert len(DatasetCatalog.get(name)) == 1


def test_odvg_write_then_read_round_trip(tmp_path):
    src = _write_lines(tmp_path / "in.jsonl", [OD_LINE, VG_LINE])
    dicts = load_odvg_jsonl(src, str(tmp_path))
    # An XYWH detection dict (as from a COCO json) is written as XYXY.
    extra = {
        "file_name": str(tmp_path / "c.jpg"),
        "height": 10,
        "width": 10,
        "image_id": 9,
        "annotations": [
            {"bbox": [1, 1, 4, 5], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0},
            {"bbox": [0, 0, 9, 9], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "iscrowd": 1},
        ],
    }  # crowd boxes are not written
    out = tmp_path / "out.jsonl"
    assert write_odvg_jsonl(dicts + [extra], str(out), ["dog", "cat"], str(tmp_path)) == 3
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0] == OD_LINE | {
        "detection": {
            "instances": [
                {"bbox": [1.0, 2.0, 11.0, 22.0], "label": 1, "category": "cat"},
                {"bbox": [5.0, 5.0, 6.0, 9.0], "label": 0, "category": "dog"},
            ]
        }
    }
    assert lines[1]["grounding"]["regions"][0] == {
        "bbox": [0.0, 0.0, 10.0, 10.0],
        "phrase": "a dog",
        "tokens_positive": [[0, 5]],
    }
    assert lines[2]["detection"]["instances"] == [
        {"bbox": [1.0, 1.0, 5.0, 6.0], "label": 0, "category": "dog"}
    ]
    again = load_odvg_jsonl(str(out), str(tmp_path))
    for a, b in zip(again[:2], dicts):
        assert a["annotations"] == b["annotations"] and a["file_name"] == b["file_name"]
        assert a.get("caption") == b.get("caption")


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", ":1 is not valid json"),
        ({k: v for k, v in OD_LINE.items() if k != "filename"}, ":1 lacks ['filename']"),
        ({**OD_LINE, **VG_LINE}, "exactly one of 'detection' (or 'od') and 'grounding'"),
        (
            {**OD_LINE, "detection": {"instances": [{"bbox": [5, 5, 1, 9], "label": 0}]}},
            ":1, instance #0: bbox [5, 5, 1, 9] (xyxy) has a negative width or height",
        ),
        (
            {
                **OD_LINE,
                "detection": {
                    "instances": [
                        {"bbox": [1, 1, 2, 2], "label": 1, "category": "dog"},
                        {"bbox": [1, 1, 2, 2], "label": 1, "category": "cat"},
                    ]
                },
            },
            "instance #1: label 1 is 'cat' here but 'dog' before",
        ),
        (
            {
                **VG_LINE,
                "grounding": {
                    "caption": "a dog",
                    "regions": [{"bbox": [0, 0, 1, 1], "tokens_positive": [[2, 9]]}],
                },
            },
            ":1, region #0: Span [2, 9) lies outside its caption",
        ),
        (
            {
                **VG_LINE,
                "grounding": {
                    "caption": "a dog",
                    "regions": [{"bbox": [0, 0, 1, 1], "phrase": "a cat"}],
                },
            },
            "phrase 'a cat' does not occur",
        ),
        (
            {**OD_LINE, "detection": {"instances": [{"bbox": [1, 1, 2, 2]}]}},
            "needs 'bbox' and 'label'",
        ),
    ],
)
def test_odvg_malformed_lines_are_rejected(tmp_path, line, message):
    jsonl = _write_lines(tmp_path / "bad.jsonl", [line])
    with pytest.raises(DatasetFormatError) as error:
        load_odvg_jsonl(jsonl, str(tmp_path))
    assert message in str(error.value) and "bad.jsonl" in str(error.value)


def test_odvg_label_outside_the_label_map_is_rejected(tmp_path):
    label_map = tmp_path / "label_map.json"
    write_label_map(["dog"], str(label_map))
    jsonl = _write_lines(tmp_path / "d.jsonl", [OD_LINE])
    with pytest.raises(DatasetFormatError, match=r"labels \[1\] are not in the label map"):
        load_odvg_jsonl(jsonl, str(tmp_path), label_map_file=str(label_map))
    (tmp_path / "neg.json").write_text(json.dumps({"0": "dog", "-2": "cat"}))
    with pytest.raises(DatasetFormatError, match="keys must be distinct non-negative integers"):
        read_label_map(str(tmp_path / "neg.json"))


def test_odvg_od_key_is_read_like_detection(tmp_path):
    line = {k: v for k, v in OD_LINE.items() if k != "detection"}
    line["od"] = OD_LINE["detection"]
    (od,) = load_odvg_jsonl(_write_lines(tmp_path / "od.jsonl", [line]), str(tmp_path))
    (detection,) = load_odvg_jsonl(_write_lines(tmp_path / "det.jsonl", [OD_LINE]), str(tmp_path))
    assert od["annotations"] == detection["annotations"] and "caption" not in od


def test_odvg_label_map_with_coco_category_ids_as_keys(tmp_path, names):
    """Open-GroundingDino's coco2odvg keeps a COCO json's category ids as labels by default
    (1-based, with gaps), and its dataset reads any label-map keys: each label keeps its name."""
    label_map = tmp_path / "label_map.json"
    label_map.write_text(json.dumps({"1": "person", "3": "car", "18": "dog"}))
    line = {
        **OD_LINE,
        "detection": {
            "instances": [
                {"bbox": [1, 2, 11, 22], "label": 18, "category": "dog"},
                {"bbox": [5, 5, 6, 9], "label": 1, "category": "person"},
                {"bbox": [5, 5, 9, 9], "label": 3},
            ]
        },
    }
    name = names("odvg")
    register_odvg(name, _write_lines(tmp_path / "d.jsonl", [line]), str(tmp_path), str(label_map))
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["person", "car", "dog"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 3: 1, 18: 2}
    (record,) = DatasetCatalog.get(name)
    named = [meta.thing_classes[a["category_id"]] for a in record["annotations"]]
    assert named == ["dog", "person", "car"]
    # A 0..K-1 label map keeps category_id = label.
    write_label_map(["dog", "cat"], str(label_map))
    (record,) = load_odvg_jsonl(
        _write_lines(tmp_path / "e.jsonl", [OD_LINE]), str(tmp_path), label_map_file=str(label_map)
    )
    assert [a["category_id"] for a in record["annotations"]] == [1, 0]


def test_odvg_region_with_several_boxes_gives_one_box_each(tmp_path):
    """mmdetection's goldg2odvg writes one region per phrase, its "bbox" a list of boxes."""
    line = {
        **VG_LINE,
        "grounding": {
            "caption": "two dogs chase a red ball",
            "regions": [
                {"bbox": [[0, 0, 10, 10], [12, 0, 20, 9]], "phrase": "two dogs",
                 "tokens_positive": [[0, 8]]},
                {"bbox": [10, 10, 20, 30], "phrase": ["red ball"], "tokens_positive": [[17, 25]]},
                {"bbox": [[1, 1, 5, 5]], "phrase": "two dogs"},
            ],
        },
    }
    (record,) = load_odvg_jsonl(_write_lines(tmp_path / "vg.jsonl", [line]), str(tmp_path))
    annos = record["annotations"]
    assert [a["bbox"] for a in annos] == [
        [0.0, 0.0, 10.0, 10.0], [12.0, 0.0, 20.0, 9.0], [10.0, 10.0, 20.0, 30.0], [1.0, 1.0, 5.0, 5.0]
    ]
    assert [a["tokens_positive"] for a in annos] == [[[0, 8]], [[0, 8]], [[17, 25]], [[0, 8]]]
    assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in annos)
    bad = {**line, "grounding": {**line["grounding"], "regions": [
        {"bbox": [[0, 0, 10, 10], [12, 0, 2, 9]], "tokens_positive": [[0, 8]]}]}}
    with pytest.raises(DatasetFormatError, match=r"bad.jsonl:1, region #0, box #1: bbox \[12"):
        load_odvg_jsonl(_write_lines(tmp_path / "bad.jsonl", [bad]), str(tmp_path))


def test_odvg_boolean_label_is_refused(tmp_path):
    line = {**OD_LINE, "detection": {"instances": [{"bbox": [1, 1, 2, 2], "label": True}]}}
    with pytest.raises(DatasetFormatError, match="label True is not a non-negative int"):
        load_odvg_jsonl(_write_lines(tmp_path / "b.jsonl", [line]), str(tmp_path))
