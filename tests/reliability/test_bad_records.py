"""Issue 15, item 3: records that would crash training later are reported when the dataset is
first loaded (naming file and record), or dropped and counted with DATASETS.SKIP_BAD_RECORDS."""

import json

import numpy as np
import pytest
from detectron2.data import MetadataCatalog
from PIL import Image

from glip_d2.data import GroundingDatasetMapper, build_grounding_train_loader
from glip_d2.data.register import register_detection_as_grounding, register_grounding_instances
from glip_d2.data.validate import BadRecordError, check_category_names
from tests.reliability.helpers import fast_tiny_cfg

CAPTION = "a red circle and a blue\u200b square"  # a zero-width space at 23


@pytest.fixture(scope="module")
def mapper_cfg():
    cfg = fast_tiny_cfg()
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


@pytest.fixture(scope="module")
def mapper(mapper_cfg):
    return GroundingDatasetMapper(mapper_cfg, is_train=True)


def _image(folder, name, h=32, w=48):
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(folder / name)


def _grounding(tmp_path, images, annos):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"images": images, "annotations": annos}))
    return str(path)


def _img(i, file_name, h=32, w=48, caption=CAPTION):
    return {"id": i, "file_name": file_name, "height": h, "width": w, "caption": caption}


def _anno(i, image_id, span):
    return {"id": i, "image_id": image_id, "bbox": [2, 2, 10, 10], "tokens_positive": [span]}


def _build(cfg, mapper, name, **keys):
    cfg = cfg.clone()
    cfg.DATASETS.TRAIN = (name,)
    for k, v in keys.items():
        setattr(cfg.DATASETS, k, v)
    return build_grounding_train_loader(cfg, mapper)


@pytest.fixture
def dataset(tmp_path, names):
    """Five records: one good, one per kind of problem."""
    for f in ("good.png", "wrong_size.png", "blank_span.png", "zero_width.png"):
        _image(tmp_path, f)
    images = [_img(1, "good.png"), _img(2, "missing.png"), _img(3, "wrong_size.png", h=64),
              _img(4, "blank_span.png"), _img(5, "zero_width.png")]
    annos = [_anno(1, 1, [2, 12]), _anno(2, 2, [2, 12]), _anno(3, 3, [2, 12]),
             _anno(4, 4, [12, 13]),  # " ": whitespace only
             _anno(5, 5, [23, 24])]  # "\u200b": an invisible character only
    name = names()
    register_grounding_instances(name, _grounding(tmp_path, images, annos), str(tmp_path))
    return name


def test_bad_records_are_reported_at_first_load_naming_file_and_record(mapper_cfg, mapper, dataset):
    with pytest.raises(BadRecordError) as err:
        _build(mapper_cfg, mapper, dataset)
    message = str(err.value)
    assert f"dataset {dataset!r}" in message and "g.json" in message
    assert "4 of 5 training records cannot be used" in message
    assert "record #1 (image_id 2, file '" in message and "missing.png'): image file does not" in message
    assert "SKIP_BAD_RECORDS" in message


def test_each_problem_is_named(mapper_cfg, mapper, dataset, caplog):
    loader = _build(mapper_cfg, mapper, dataset, SKIP_BAD_RECORDS=True)
    assert [d["image_id"] for d in loader.dataset] == [1]
    log = caplog.text
    assert "dropped 4 of 5 bad training records" in log
    assert "image file does not exist" in log
    assert "the json says height 64, width 48, the image is 32 x 48" in log
    assert "span [12, 13) = ' ' maps to no token" in log
    batch = next(iter(loader))  # the good record trains
    assert len(batch) == 2 and batch[0]["instances"].gt_positive_map.any()


def test_quick_check_skips_the_header_read_and_the_mapper_catches_the_size(
        mapper_cfg, mapper, tmp_path, names):
    _image(tmp_path, "a.png")
    name = names()
    path = _grounding(tmp_path, [_img(1, "a.png", h=64)], [_anno(1, 1, [2, 12])])
    register_grounding_instances(name, path, str(tmp_path))
    loader = _build(mapper_cfg, mapper, name, CHECK_RECORDS="quick")
    with pytest.raises(BadRecordError, match=r"image_id 1, file .*a.png.*Mismatched image shape"):
        next(iter(loader))


def test_empty_or_invisible_category_names_are_an_error(mapper_cfg, mapper, tmp_path, names):
    _image(tmp_path, "c.png")
    data = {"images": [{"id": 1, "file_name": "c.png", "height": 32, "width": 48}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5],
                             "area": 25, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "\u200b\ufeff"},
                           {"id": 3, "name": ""}]}
    path = tmp_path / "det.json"
    path.write_text(json.dumps(data))
    name = names()
    register_detection_as_grounding(name, {}, str(path), str(tmp_path))
    with pytest.raises(BadRecordError, match=r"#1 '\\u200b\\ufeff', #2 ''.*Rename them"):
        _build(mapper_cfg, mapper, name)
    with pytest.raises(BadRecordError, match="cannot be put in a prompt"):  # skip does not hide it
        _build(mapper_cfg, mapper, name, SKIP_BAD_RECORDS=True)
    check_category_names(["cat", "dog"], mapper.tokenizer, "fine")
    assert MetadataCatalog.get(name).thing_classes[0] == "cat"


def test_a_category_name_longer_than_a_prompt_is_an_error_at_load(mapper):
    """Before, the first training prompt that sampled it raised, at whatever iteration."""
    names = ["cat", "very " * 10 + "long dog"]
    check_category_names(names, mapper.tokenizer, "fine", max_query_len=14)  # 12 + 2 fit
    with pytest.raises(BadRecordError, match=r"mine: category names longer than a whole prompt "
                       r"\(MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN 13.*#1 'very .* \(12 tokens\)"):
        check_category_names(names, mapper.tokenizer, "mine", max_query_len=13)
