"""Objects365 (v1/v2 jsons) as detection-as-grounding data."""

import os
import random

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from glip_d2.data import GroundingDatasetMapper
from glip_d2.data.datasets import DatasetFormatError, register_objects365
from glip_d2.data.datasets import coco_json as coco_json_module
from glip_d2.data.datasets.objects365 import clean_objects365_name
from tests.benchmarks.helpers import coco_json, write_json


def _v2_json():
    data = coco_json(
        categories=[(1, "Person"), (5, "Cabinet/shelf"), (9, "Traffic_Light (small)")],
        images=[
            (10, "images/v2/patch3/objects365_v2_00000010.jpg"),
            (11, "images/v1/patch0/objects365_v1_00000011.jpg"),
        ],
        annotations=[(10, 5, [1, 2, 30, 40]), (10, 1, [5, 5, 10, 10]), (11, 9, [0, 0, 2, 3])],
    )
    return data


def test_objects365_names_are_cleaned():
    assert clean_objects365_name("Cabinet/shelf") == "cabinet/shelf"
    assert clean_objects365_name("Traffic_Light (small)") == "traffic light"
    assert clean_objects365_name("  Other  Shoes ") == "other shoes"


def test_objects365_v2_json_parsed_into_detection_dicts(tmp_path, names):
    json_file = write_json(tmp_path / "zhiyuan_objv2_val.json", _v2_json())
    name = names("objects365")
    register_objects365(name, json_file, str(tmp_path / "val"))
    meta = MetadataCatalog.get(name)
    # Large jsons are not read at registration: the names come on first load.
    assert not hasattr(meta, "thing_classes")
    dicts = DatasetCatalog.get(name)
    assert meta.thing_classes == ["person", "cabinet/shelf", "traffic light"]
    assert meta.thing_classes_raw == ["Person", "Cabinet/shelf", "Traffic_Light (small)"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 5: 1, 9: 2}
    assert meta.evaluator_type == "coco"
    assert [d["file_name"] for d in dicts] == [
        str(tmp_path / "val" / "patch3" / "objects365_v2_00000010.jpg"),
        str(tmp_path / "val" / "patch0" / "objects365_v1_00000011.jpg"),
    ]
    assert dicts[0]["image_id"] == 10 and dicts[0]["dataset_name"] == name
    assert dicts[0]["annotations"] == [
        {
            "bbox": [1.0, 2.0, 30.0, 40.0],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 1,
            "iscrowd": 0,
        },
        {
            "bbox": [5.0, 5.0, 10.0, 10.0],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 0,
            "iscrowd": 0,
        },
    ]
    assert [a["category_id"] for a in dicts[1]["annotations"]] == [2]

    # A second registration of the same file takes the names from the parse cache at once.
    other = names("objects365")
    register_objects365(other, json_file, str(tmp_path / "val"))
    assert MetadataCatalog.get(other).thing_classes == meta.thing_classes


def test_objects365_detection_dict_becomes_a_training_prompt(tmp_path, names):
    json_file = write_json(tmp_path / "o365.json", _v2_json())
    name = names("objects365")
    register_objects365(name, json_file, str(tmp_path))
    record = DatasetCatalog.get(name)[0]
    image_path = tmp_path / "patch3" / "objects365_v2_00000010.jpg"
    image_path.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((100, 100, 3), dtype=np.uint8)).save(image_path)
    mapper = GroundingDatasetMapper(
        True, augmentations=[], image_format="BGR", num_negatives=-1, dataset_names=[name]
    )
    random.seed(0)
    out = mapper(record)
    # GLIP's policy: the image's categories plus sampled negatives, with the cleaned names.
    for label in ("person", "cabinet/shelf", "traffic light"):
        assert label in out["caption"]
    assert out["instances"].gt_classes.tolist() == [1, 0]
    assert out["instances"].gt_positive_map.shape[0] == 2


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["annotations"][1].pop("bbox"), "annotation #1 (id 2) lacks ['bbox']"),
        (lambda d: d["annotations"][0].update(category_id=77), "category_id 77"),
        (lambda d: d["annotations"][2].update(bbox=[0, 0, -2, 3]), "negative width or height"),
        (lambda d: d["annotations"][2].update(image_id=99), "image_id 99"),
        (lambda d: d["images"][1].pop("height"), "image #1 (id 11) lacks ['height']"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, "x", 4]), "not four finite numbers"),
    ],
)
def test_objects365_malformed_records_are_rejected(tmp_path, names, mutate, message):
    data = _v2_json()
    mutate(data)
    json_file = write_json(tmp_path / "bad.json", data)
    name = names("objects365")
    register_objects365(name, json_file, str(tmp_path))
    with pytest.raises(DatasetFormatError) as error:
        DatasetCatalog.get(name)
    assert message in str(error.value) and "bad.json" in str(error.value)


def test_objects365_json_is_parsed_once_then_again_when_it_changes(
    tmp_path, names, parse_cache, monkeypatch
):
    calls = []
    parse = coco_json_module.parse_detection_json
    monkeypatch.setattr(
        coco_json_module, "parse_detection_json", lambda *a: calls.append(a) or parse(*a)
    )
    json_file = tmp_path / "o365.json"
    write_json(json_file, _v2_json())
    name = names("objects365")
    register_objects365(name, str(json_file), str(tmp_path))
    for _ in range(3):
        assert len(DatasetCatalog.get(name)) == 2
    assert len(calls) == 1 and len(list(parse_cache.iterdir())) == 2  # parse + names

    data = _v2_json()
    data["images"].append({"id": 12, "file_name": "x.jpg", "height": 9, "width": 9})
    write_json(json_file, data)
    os.utime(json_file, ns=(1, 1))  # a different mtime even on coarse clocks
    assert len(DatasetCatalog.get(name)) == 3 and len(calls) == 2

    monkeypatch.setenv("GLIP_D2_CACHE_DIR", "")  # cache off: parsed on every load
    DatasetCatalog.get(name), DatasetCatalog.get(name)
    assert len(calls) == 4
