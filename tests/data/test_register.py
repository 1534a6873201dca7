"""Registration of grounding and detection jsons."""

import json
import uuid

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from glip_d2.data.register import register_detection_as_grounding, register_grounding_instances


@pytest.fixture
def name(private_parse_cache):  # detection jsons are loaded through the parse cache
    name = f"test_register_{uuid.uuid4().hex[:8]}"
    yield name
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _write(tmp_path, data):
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    return str(path)


def _grounding_json(span=(21, 31)):
    return {
        "images": [
            {
                "id": 3,
                "file_name": "a.jpg",
                "height": 20,
                "width": 30,
                "caption": "a dog on the left of a red ball",
                "tokens_positive_eval": [[[0, 5]]],
            },
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 3,
                "bbox": [1, 2, 3, 4],
                "category_id": 1,
                "iscrowd": 0,
                "tokens_positive": [[0, 5]],
                "phrase_ids": 0,
            },
            {
                "id": 2,
                "image_id": 3,
                "bbox": [5, 6, 7, 8],
                "category_id": 1,
                "iscrowd": 0,
                "tokens_positive": [list(span)],
            },
        ],
        "categories": [{"id": 1, "name": "object"}],
    }


def test_grounding_json_is_registered_lazily(tmp_path, name):
    register_grounding_instances(name, _write(tmp_path, _grounding_json()), "/images")
    assert MetadataCatalog.get(name).evaluator_type == "grounding"
    (record,) = DatasetCatalog.get(name)
    assert record["file_name"] == "/images/a.jpg" and record["image_id"] == 3
    assert record["caption"] == "a dog on the left of a red ball"
    assert record["tokens_positive_eval"] == [[[0, 5]]]
    first, second = record["annotations"]
    assert first["tokens_positive"] == [[0, 5]] and first["phrase_id"] == 0
    assert first["bbox"] == [1, 2, 3, 4] and first["bbox_mode"] == BoxMode.XYWH_ABS
    assert "phrase_id" not in second and second["tokens_positive"] == [[21, 31]]


def test_grounding_span_outside_caption_fails_at_load(tmp_path, name):
    register_grounding_instances(name, _write(tmp_path, _grounding_json((22, 99))), "/images")
    with pytest.raises(ValueError, match=r"annotation #1 \(id 2\): Span \[22, 99\) lies outside its caption"):
        DatasetCatalog.get(name)


def test_registered_names_are_never_replaced(tmp_path, name):
    path = _write(tmp_path, _grounding_json())
    register_grounding_instances(name, path, "/images")
    with pytest.raises(ValueError, match=f"'{name}' is already registered"):
        register_grounding_instances(name, path, "/images")
    with pytest.raises(ValueError, match="'coco_2017_val' is already registered"):
        register_detection_as_grounding("coco_2017_val", {}, path, "/images")
    assert MetadataCatalog.get("coco_2017_val").evaluator_type == "coco"


def test_detection_registration_records_classes(tmp_path, name):
    data = {
        "images": [{"id": 1, "file_name": "b.jpg", "height": 20, "width": 30}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "bbox": [1, 2, 3, 4],
                "category_id": 9,
                "iscrowd": 0,
                "area": 12,
            },
        ],
        "categories": [{"id": 9, "name": "dog"}, {"id": 4, "name": "traffic_light"}],
    }
    register_detection_as_grounding(name, {}, _write(tmp_path, data), "/images")
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["traffic_light", "dog"]  # recorded before loading
    assert meta.thing_classes_clean == ["traffic light", "dog"]
    assert meta.thing_dataset_id_to_contiguous_id == {4: 0, 9: 1}
    assert meta.evaluator_type == "coco"
    (record,) = DatasetCatalog.get(name)
    assert record["dataset_name"] == name
    assert record["annotations"][0]["category_id"] == 1  # contiguous


def test_detection_registration_with_given_classes_does_not_read_the_json(tmp_path, name):
    missing = str(tmp_path / "not_written_yet.json")
    register_detection_as_grounding(name, {"thing_classes": ["a_b", "c"]}, missing, "/images")
    assert MetadataCatalog.get(name).thing_classes_clean == ["a b", "c"]


def _two_category_json():
    return {
        "images": [{"id": 1, "file_name": "b.jpg", "height": 20, "width": 30}],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 9, "iscrowd": 0},
        ],
        "categories": [{"id": 9, "name": "dog"}, {"id": 4, "name": "traffic_light"}],
    }


def test_detection_registration_with_given_classes_loads_with_them(tmp_path, name):
    path = _write(tmp_path, _two_category_json())
    register_detection_as_grounding(name, {"thing_classes": ["traffic light", "hound"]}, path, "/i")
    (record,) = DatasetCatalog.get(name)  # Detectron2's loader would re-set thing_classes here
    assert record["annotations"][0]["category_id"] == 1 and record["dataset_name"] == name
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["traffic light", "hound"]  # the given names stay
    assert meta.thing_dataset_id_to_contiguous_id == {4: 0, 9: 1}  # the json's ids, in order


def test_detection_registration_with_a_given_id_map_uses_it(tmp_path, name):
    metadata = {
        "thing_classes": ["dog", "light"],
        "thing_dataset_id_to_contiguous_id": {9: 0, 4: 1},
    }
    register_detection_as_grounding(name, metadata, _write(tmp_path, _two_category_json()), "/i")
    (record,) = DatasetCatalog.get(name)
    assert record["annotations"][0]["category_id"] == 0


def test_detection_registration_with_too_few_given_classes_is_refused(tmp_path, name):
    path = _write(tmp_path, _two_category_json())
    register_detection_as_grounding(name, {"thing_classes": ["dog"]}, path, "/i")
    with pytest.raises(ValueError, match=r"registered with 1 thing_classes.*one name per json"):
        DatasetCatalog.get(name)
