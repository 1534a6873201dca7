"""Custom COCO jsons (one call, DATASETS.CUSTOM); COCOEvaluator with contiguous pred_classes."""

import contextlib
import io
import sys
import tracemalloc
import types

import numpy as np
import torch
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from glip_d2 import add_glip_config
from glip_d2.config import add_dataset_config
from glip_d2.data.datasets import (
    DatasetFormatError,
    register_custom_coco,
    register_datasets_from_config,
)
from glip_d2.data.datasets.coco_json import parse_detection_json
from glip_d2.engine import build_glip_evaluator, fast_coco_eval_available, set_test_vocabulary
from glip_d2.evaluation import (
    FixedAPEvaluator,
    FlickrEvaluator,
    RefExpEvaluator,
    StandardLVISEvaluator,
)
from tests.benchmarks.conftest import forget
from tests.benchmarks.helpers import coco_json, instances, write_json

# Non-contiguous dataset ids: the model predicts contiguous ids 0, 1, 2.
CATEGORIES = [(3, "red_apple"), (7, "pear (fruit)"), (11, "plum")]


def _json():
    return coco_json(
        CATEGORIES,
        [(1, "a.jpg"), (2, "b.jpg"), (3, "c.jpg")],
        [
            (1, 3, [10, 10, 30, 30]),
            (1, 7, [50, 50, 20, 40]),
            (2, 11, [0, 0, 60, 60]),
            (2, 3, [70, 70, 20, 20]),
            (3, 7, [5, 5, 40, 40]),
        ],
    )


def _cfg():
    cfg = get_cfg()
    add_glip_config(cfg)
    add_dataset_config(cfg)
    return cfg


def test_custom_coco_one_call_registration(tmp_path, names):
    name = names("custom")
    register_custom_coco(name, write_json(tmp_path / "train.json", _json()), str(tmp_path))
    meta = MetadataCatalog.get(name)
    # Read at registration: the names are known before the first load.
    assert meta.thing_classes == ["red_apple", "pear (fruit)", "plum"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 11: 2}
    dicts = DatasetCatalog.get(name)
    assert [[a["category_id"] for a in d["annotations"]] for d in dicts] == [[0, 1], [2, 0], [1]]
    assert dicts[0]["file_name"] == str(tmp_path / "a.jpg")
    with pytest.raises(ValueError, match="already registered"):
        register_custom_coco(name, str(tmp_path / "train.json"), str(tmp_path))


def test_custom_coco_malformed_json_fails_at_registration(tmp_path, names):
    data = _json()
    data["annotations"][3]["bbox"] = [70, 70, 20, -20]
    with pytest.raises(DatasetFormatError, match=r"annotation #3 \(id 4\): bbox .* negative"):
        register_custom_coco(names("custom"), write_json(tmp_path / "x.json", data), ".")
    data = _json()
    del data["categories"]
    with pytest.raises(DatasetFormatError, match="needs 'images' and 'categories'"):
        register_custom_coco(names("custom"), write_json(tmp_path / "y.json", data), ".")


def _with(path, value):
    """A copy of ``_json()`` with ``value`` at ``path`` (keys and indices)."""
    data = _json()
    *parents, key = path
    target = data
    for k in parents:
        target = target[k]
    target[key] = value
    return data


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("annotations", 2, "category_id"), 7.9, "annotation #2 (id 3): category_id 7.9 is not an"),
        (("annotations", 2, "category_id"), "11", "category_id '11' is not an integer"),
        (("annotations", 2, "category_id"), True, "category_id True is not an integer"),
        (("annotations", 1, "bbox"), ["50", 50, 20, 40], "#1 (id 2): bbox ['50', 50, 20, 40] is"),
        (("annotations", 1, "bbox"), [[50, 50], [20, 40]], "bbox [[50, 50], [20, 40]] is not four"),
        (("annotations", 1, "bbox"), [50, 50, 20, 40, 1], "bbox [50, 50, 20, 40, 1] is not four"),
        (("annotations", 1, "bbox"), [50, 50, True, 40], "bbox [50, 50, True, 40] is not four"),
        (("annotations", 4, "iscrowd"), None, "annotation #4 (id 5): iscrowd None is not an"),
        (("annotations", 4, "iscrowd"), 2, "iscrowd 2 is not one of [0, 1]"),
        (("annotations", 4, "iscrowd"), "1", "iscrowd '1' is not an integer"),
        (("annotations", 4, "id"), "5", "annotation #4 (id '5'): id '5' is not an integer"),
        (("images", 1, "height"), 99.7, "image #1 (id 2): height 99.7 is not an integer"),
        (("images", 1, "height"), None, "image #1 (id 2): height None is not an integer"),
        (("images", 2, "width"), "100", "image #2 (id 3): width '100' is not an integer"),
        (("images", 2, "id"), 3.5, "image #2 (id 3.5): id 3.5 is not an integer"),
    ],
)
def test_coco_fields_of_the_wrong_type_are_named_not_converted(tmp_path, path, value, message):
    json_file = write_json(tmp_path / "typed.json", _with(path, value))
    with pytest.raises(DatasetFormatError) as error:
        parse_detection_json(json_file)
    assert str(error.value).startswith(json_file) and message in str(error.value)


def test_coco_integral_floats_are_the_integers_detectron2_takes_them_for(tmp_path):
    """Some json writers emit 512.0 for sizes and ids; Detectron2's loader accepts them."""
    plain = parse_detection_json(write_json(tmp_path / "ints.json", _json()))
    data = _json()
    for image in data["images"]:
        image["height"], image["width"], image["id"] = (float(image[k]) for k in ("height", "width", "id"))
    for anno in data["annotations"]:
        anno["category_id"], anno["id"] = float(anno["category_id"]), float(anno["id"])
        anno["iscrowd"] = float(anno.get("iscrowd", 0))
    floats = parse_detection_json(write_json(tmp_path / "floats.json", data))
    assert repr(floats) == repr(plain)


def test_coco_nested_boxes_are_not_reshaped_into_boxes(tmp_path):
    data = _json()
    for anno in data["annotations"]:  # every box two pairs: numpy alone would reshape them
        x, y, w, h = anno["bbox"]
        anno["bbox"] = [[x, y], [w, h]]
    nested = r"#0 \(id 1\): bbox \[\[10, 10\], \[30, 30\]\] is not four finite numbers"
    with pytest.raises(DatasetFormatError, match=nested):
        parse_detection_json(write_json(tmp_path / "pairs.json", data))


def test_coco_repeated_annotation_ids_and_ignore_are_refused(tmp_path):
    data = _json()
    data["annotations"][3]["id"] = 2
    with pytest.raises(DatasetFormatError, match=r"#3 \(id 2\): annotation id 2 is also the id of "
                                                 r"annotation #1; annotation ids must be unique"):
        parse_detection_json(write_json(tmp_path / "dup.json", data))
    # Detectron2 lets COCO 2014's minival jsons repeat ids, and so does glip_d2.
    assert len(parse_detection_json(write_json(tmp_path / "minival.json", data))["ann_boxes"]) == 5
    data = _json()
    data["annotations"][2]["ignore"] = 1
    with pytest.raises(DatasetFormatError, match=r"#2 \(id 3\) has \"ignore\": 1, which Detectron"):
        parse_detection_json(write_json(tmp_path / "ignore.json", data))
    data["annotations"][2]["ignore"] = 0
    parsed = parse_detection_json(write_json(tmp_path / "ok.json", data))
    assert parsed["ann_iscrowd"].tolist() == [0] * 5


def test_repeated_ids_are_found_as_int64_and_beyond_it(tmp_path):
    """Repeats are found on a sorted int64 array (a set of Objects365's 25M ids took ~1 GB);
    ids beyond int64, and integral floats, are compared as Python numbers."""
    from glip_d2.data.datasets.coco_json import _has_repeats

    assert not _has_repeats([5, 1, 3]) and _has_repeats([5, 1, 3, 1])
    assert not _has_repeats([]) and not _has_repeats([2 ** 63 - 1, -(2 ** 63)])
    big = 2 ** 70
    assert not _has_repeats([big, 1, big + 1]) and _has_repeats([big, 1, big])
    assert _has_repeats([4, 4.0]) and not _has_repeats([4, 5.0])
    ids = list(range(1_000_000))
    tracemalloc.start()
    try:
        assert not _has_repeats(ids)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12e6, peak  # the int64 array (8 MB); the set took 40 MB
    data = _json()
    for a, i in zip(data["annotations"], range(5)):
        a["id"] = big + i
    assert len(parse_detection_json(write_json(tmp_path / "big.json", data))["ann_boxes"]) == 5
    data["annotations"][4]["id"] = big + 1
    with pytest.raises(DatasetFormatError, match=r"annotation id %d is also the id of annotation #1"
                       % (big + 1)):
        parse_detection_json(write_json(tmp_path / "big_dup.json", data))


def test_a_mask_model_on_a_box_only_json_is_scored_on_boxes(tmp_path, names):
    """A MODEL.MASK_ON model's predictions carry masks: COCOEvaluator added "segm" and
    pycocotools failed (KeyError 'segmentation') after the whole inference."""
    name = names("boxes_only")
    register_custom_coco(name, write_json(tmp_path / "val.json", _json()), str(tmp_path))
    evaluator = build_glip_evaluator(_cfg(), name, output_folder=str(tmp_path / "out"))
    evaluator.reset()
    for image_id, out in _predictions().items():
        inst = out["instances"]
        inst.pred_masks = torch.zeros(len(inst), 100, 100, dtype=torch.bool)
        evaluator.process([{"image_id": image_id}], [out])
    res = evaluator.evaluate()
    assert set(res) == {"bbox"} and np.isfinite(res["bbox"]["AP"])


def test_custom_coco_from_config_only(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    write_json(tmp_path / "mine" / "train.json", _json())
    cfg = _cfg()
    cfg.merge_from_list(["DATASETS.CUSTOM", "[('cfg_custom_train', 'mine/train.json', 'mine')]"])
    try:
        assert register_datasets_from_config(cfg) == ["cfg_custom_train"]
        assert register_datasets_from_config(cfg) == []  # idempotent
        meta = MetadataCatalog.get("cfg_custom_train")
        assert meta.json_file == str(tmp_path / "mine" / "train.json")
        assert meta.image_root == str(tmp_path / "mine") and meta.evaluator_type == "coco"
        assert len(DatasetCatalog.get("cfg_custom_train")) == 3
        cfg.DATASETS.CUSTOM = [["cfg_custom_train", "other.json", "mine"]]
        with pytest.raises(ValueError, match="already registered with json_file="):
            register_datasets_from_config(cfg)
        cfg.DATASETS.CUSTOM = [["only_a_name"]]
        with pytest.raises(ValueError, match=r"is not \[name, json_file, image_root\]"):
            register_datasets_from_config(cfg)
    finally:
        forget("cfg_custom_train")


def _predictions():
    """Contiguous pred_classes; one localisation at IoU ~0.6, one false positive, one miss."""
    return {
        1: instances(
            [[10, 10, 40, 40], [50, 55, 70, 95], [0, 0, 10, 10]], [0.9, 0.8, 0.3], [0, 1, 2]
        ),
        2: instances([[0, 0, 60, 48], [70, 70, 90, 90]], [0.7, 0.6], [2, 0]),
        3: instances([[60, 60, 80, 80]], [0.5], [1]),
    }


def _stand_in_c():
    """A ``detectron2._C`` without compiled ops, as Detectron2 unpacked for a Python its
    extension was not built for: every attribute is a function that raises when called."""
    module = types.ModuleType("detectron2._C")

    def missing(name):
        def raise_(*args, **kwargs):
            raise RuntimeError(f"detectron2._C.{name} is not available here")
        return raise_

    module.__getattr__ = missing
    return module


@pytest.mark.parametrize("compiled_ops", [True, False], ids=["compiled", "stand_in"])
def test_coco_evaluator_maps_contiguous_pred_classes_to_dataset_ids(tmp_path, names, monkeypatch,
                                                                    compiled_ops):
    if not compiled_ops:  # the fast evaluator would fail at its first image: pycocotools instead
        import detectron2

        stand_in = _stand_in_c()
        monkeypatch.setitem(sys.modules, "detectron2._C", stand_in)
        monkeypatch.setattr(detectron2, "_C", stand_in, raising=False)
        assert not fast_coco_eval_available()
    json_file = write_json(tmp_path / "val.json", _json())
    name = names("coco")
    register_custom_coco(name, json_file, str(tmp_path))
    evaluator = build_glip_evaluator(_cfg(), name, output_folder=str(tmp_path / "out"))
    assert isinstance(evaluator, COCOEvaluator)
    assert evaluator._use_fast_impl == fast_coco_eval_available()
    evaluator.reset()
    for image_id, out in _predictions().items():
        evaluator.process([{"image_id": image_id}], [out])
    res = evaluator.evaluate()["bbox"]

    # Independently: pycocotools on the same detections written with the dataset's own ids.
    to_id = {0: 3, 1: 7, 2: 11}
    dets = []
    for image_id, out in _predictions().items():
        inst = out["instances"]
        for (x1, y1, x2, y2), s, c in zip(
            inst.pred_boxes.tensor.tolist(), inst.scores.tolist(), inst.pred_classes.tolist()
        ):
            dets.append(
                {
                    "image_id": image_id,
                    "category_id": to_id[c],
                    "score": s,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert res["AP"] == pytest.approx(ev.stats[0] * 100)
    assert res["AP50"] == pytest.approx(ev.stats[1] * 100)
    assert res["AP75"] == pytest.approx(ev.stats[2] * 100)
    assert 0 < res["AP"] < 100 and not np.isnan(res["AP"])


def test_evaluator_routing_by_evaluator_type(tmp_path, names):
    json_file = write_json(
        tmp_path / "lvis.json",
        {
            "categories": [{"id": 1, "name": "a", "frequency": "c"}],
            "images": [
                {
                    "id": 1,
                    "file_name": "x/1.jpg",
                    "height": 9,
                    "width": 9,
                    "neg_category_ids": [],
                    "not_exhaustive_category_ids": [],
                }
            ],
            "annotations": [],
        },
    )
    kinds = {}
    for kind in ("lvis", "flickr", "grounding", "refcoco", "odinw"):
        kinds[kind] = names(kind)
        MetadataCatalog.get(kinds[kind]).set(
            evaluator_type=kind,
            json_file=json_file,
            thing_classes=["a"],
            thing_dataset_id_to_contiguous_id={1: 0},
        )
    cfg = _cfg()
    out = str(tmp_path / "out")
    assert isinstance(build_glip_evaluator(cfg, kinds["lvis"], out), StandardLVISEvaluator)
    cfg.TEST.BENCHMARK.LVIS_FIXED_AP = True
    both = build_glip_evaluator(cfg, kinds["lvis"], out)
    assert isinstance(both, DatasetEvaluators)
    assert [type(e) for e in both._evaluators] == [StandardLVISEvaluator, FixedAPEvaluator]
    assert both._evaluators[0]._max_dets_per_image == 300
    assert isinstance(build_glip_evaluator(cfg, kinds["flickr"], out), FlickrEvaluator)
    assert build_glip_evaluator(cfg, kinds["grounding"], out)._task == "grounding"
    assert isinstance(build_glip_evaluator(cfg, kinds["refcoco"], out), RefExpEvaluator)
    assert isinstance(build_glip_evaluator(cfg, kinds["odinw"], out), COCOEvaluator)
    # COCO's standard maxDets, whatever the model's cap; another value only by its own key
    cfg.MODEL.ATSS.DETECTIONS_PER_IMG = 300
    assert build_glip_evaluator(cfg, kinds["odinw"], out)._max_dets_per_image == [1, 10, 100]
    cfg.TEST.BENCHMARK.COCO_MAX_DETS_PER_IMAGE = 300
    assert build_glip_evaluator(cfg, kinds["odinw"], out)._max_dets_per_image == [1, 10, 300]
    cfg.TEST.BENCHMARK.COCO_MAX_DETS_PER_IMAGE = 0
    with pytest.raises(ValueError, match="COCO_MAX_DETS_PER_IMAGE must be a positive integer"):
        build_glip_evaluator(cfg, kinds["odinw"], out)
    other = names("sem_seg")
    MetadataCatalog.get(other).set(evaluator_type="sem_seg")
    with pytest.raises(NotImplementedError, match="evaluator_type 'sem_seg'"):
        build_glip_evaluator(cfg, other)


def test_grounding_datasets_need_no_test_vocabulary(names):
    class Model:
        def set_vocabulary(self, names):
            raise AssertionError("grounding inputs carry their own captions")

    for kind in ("flickr", "refcoco", "grounding"):
        name = names(kind)
        MetadataCatalog.get(name).set(evaluator_type=kind)
        set_test_vocabulary(Model(), name)


@pytest.mark.parametrize(
    "segmentation, message",
    [
        # One flat polygon instead of a list of polygons: read as "no valid polygon", the whole
        # annotation (box included) used to be dropped with only a warning.
        ([10, 10, 40, 10, 40, 40], "is one flat list of coordinates; COCO polygons are a list"),
        ({"counts": "abc"}, 'is not an RLE {"size": [height, width]'),
        ([["10", 10, 40, 10, 40, 40]], "is neither a list of polygons"),
        ("polygon", "is neither a list of polygons"),
    ],
)
def test_coco_malformed_segmentation_is_named_not_dropped_with_its_box(
    tmp_path, segmentation, message
):
    data = _json()
    data["annotations"][1]["segmentation"] = segmentation
    json_file = write_json(tmp_path / "segm.json", data)
    with pytest.raises(DatasetFormatError) as error:
        parse_detection_json(json_file)
    assert str(error.value).startswith(f"{json_file}: annotation #1 (id 2): segmentation")
    assert message in str(error.value)
    # COCO's forms are kept: polygons and RLE (a short polygon is dropped, as Detectron2 does).
    data["annotations"][1]["segmentation"] = [[10, 10, 40, 10, 40.5, 40]]
    data["annotations"][2]["segmentation"] = {"size": [100, 100], "counts": [5, 10, 9985]}
    parsed = parse_detection_json(write_json(tmp_path / "ok.json", data))
    assert sorted(parsed["ann_segmentations"]) == [1, 2]


def test_coco_image_without_file_name_is_named(tmp_path, names):
    data = _json()
    del data["images"][1]["file_name"]
    data["images"][1]["coco_url"] = "http://images.cocodataset.org/val2017/b.jpg"
    name = names("custom")
    register_custom_coco(name, write_json(tmp_path / "url.json", data), str(tmp_path))
    with pytest.raises(DatasetFormatError, match=r"url.json: image #1 \(id 2\) has no 'file_name'"):
        DatasetCatalog.get(name)
