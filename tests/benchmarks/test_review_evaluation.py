"""Review of the benchmark evaluators and protocols: LVIS test-style jsons (no annotations) under
FixedAP, the standard LVIS cap's bad values, and protocols over a model config's own evaluation
options."""

import json

import pytest
from detectron2.config import get_cfg

from glip_d2 import add_glip_config, model_zoo
from glip_d2.data.datasets import register_lvis, register_odinw
from glip_d2.engine import build_glip_evaluator
from glip_d2.evaluation import FixedAPEvaluator, StandardLVISEvaluator
from tests.benchmarks.conftest import forget
from tests.benchmarks.helpers import coco_json, instances, write_json
from tests.benchmarks.test_lvis import _lvis_json, _run

pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated")


@pytest.fixture
def lvis_without_annotations(tmp_path, names):
    """An LVIS json with images and categories but no annotations (as LVIS v1 test-dev)."""
    name = names("lvis_test")
    data = _lvis_json()
    data["annotations"] = []
    register_lvis(name, write_json(tmp_path / "lvis_test.json", data), str(tmp_path))
    return name


def test_fixedap_on_a_json_without_annotations_writes_results_and_scores_nothing(
    lvis_without_annotations, tmp_path
):
    out = tmp_path / "out"
    res = _run(FixedAPEvaluator(lvis_without_annotations, output_dir=str(out), distributed=False))
    # nothing to score against: no metrics (LVISEval gave -100 for every one), like LVISEvaluator
    assert res == {}
    assert _run(StandardLVISEvaluator(lvis_without_annotations, distributed=False)) == {}
    # the cut results are still written, for the evaluation server: every detection (no cap
    # binds here), with LVIS category ids
    results = json.loads((out / "lvis_fixed_ap_results.json").read_text())
    assert len(results) == 306
    assert {r["category_id"] for r in results} == {1, 2, 13}


@pytest.mark.parametrize("cap", [0, -5])
def test_standard_lvis_cap_below_1_is_refused_before_inference(tmp_path, names, cap):
    name = names("lvis")
    register_lvis(name, write_json(tmp_path / "lvis.json", _lvis_json()), str(tmp_path))
    # 0 failed after the whole inference (IndexError inside the LVIS API), -5 meant "no cap"
    with pytest.raises(ValueError, match="LVIS_MAX_DETS_PER_IMAGE must be a positive integer"):
        StandardLVISEvaluator(name, max_dets_per_image=cap)
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.TEST.BENCHMARK.LVIS_MAX_DETS_PER_IMAGE = cap
    with pytest.raises(ValueError, match="LVIS_MAX_DETS_PER_IMAGE"):
        build_glip_evaluator(cfg, name, str(tmp_path))
    # -1 is the LVIS API's "no cap"; None its default 300
    assert _run(StandardLVISEvaluator(name, max_dets_per_image=-1))["bbox"]["APc"] == 50.0
    assert _run(StandardLVISEvaluator(name))["bbox"]["APc"] == 0.0


def _model_cfg():
    """A model config with evaluation options of its own (a demo's thresholds, say)."""
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("glip_swin_t"))
    cfg.MODEL.ATSS.INFERENCE_TH, cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.5, 0.5
    cfg.TEST.BENCHMARK.COCO_MAX_DETS_PER_IMAGE = 300
    cfg.TEST.BENCHMARK.REFCOCO_MATCH = "iou"
    return cfg


@pytest.mark.parametrize("protocol", ["coco", "odinw13_zero_shot", "odinw35_zero_shot"])
def test_coco_format_protocols_score_at_cocos_100_detections(protocol):
    cfg = model_zoo.apply_protocol(_model_cfg(), protocol)
    assert cfg.TEST.BENCHMARK.COCO_MAX_DETS_PER_IMAGE == 100
    assert cfg.MODEL.ATSS.INFERENCE_TH == 0.05 and cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.05


@pytest.mark.parametrize("protocol", ["flickr30k", "refcoco"])
def test_grounding_protocols_reset_the_score_thresholds(protocol):
    # a model config's 0.5 would cut the boxes Recall@5/10 and Acc@5/10 rank
    cfg = model_zoo.apply_protocol(_model_cfg(), protocol)
    assert cfg.MODEL.ATSS.INFERENCE_TH == 0.05 and cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.05
    assert cfg.TEST.BENCHMARK.GROUNDING_TOPK == (1, 5, 10)
    assert cfg.TEST.BENCHMARK.GROUNDING_IOU_THRESH == 0.5


def test_refcoco_protocol_scores_by_giou_as_official_glip():
    cfg = model_zoo.apply_protocol(_model_cfg(), "refcoco")
    assert cfg.TEST.BENCHMARK.REFCOCO_MATCH == "giou"


def test_odinw_raw_roboflow_export_is_scored_on_its_vocabulary(tmp_path):
    """A raw Roboflow export keeps its background entry (category 0), which the ODinW loader
    leaves out of the vocabulary; COCOEvaluator scored the json's every category and failed
    (AssertionError) matching the per-category APs to thing_classes."""
    chess = coco_json(
        [(0, "pieces"), (1, "white king"), (2, "black bishop")],
        [(1, "c.jpg"), (2, "d.jpg")],
        [(1, 2, [1, 1, 5, 5]), (2, 1, [10, 10, 40, 40])],
    )
    raw = "ChessPieces/Chess Pieces.v23-raw.coco/valid/_annotations.coco.json"
    write_json(tmp_path / "odinw" / raw, chess)
    registered = register_odinw(str(tmp_path / "odinw"))
    try:
        cfg = get_cfg()
        add_glip_config(cfg)
        evaluator = build_glip_evaluator(cfg, "odinw_ChessPieces_val", str(tmp_path / "out"))
        evaluator.reset()
        # the bishop found (contiguous 1 = json id 2), the king missed (a box elsewhere)
        evaluator.process([{"image_id": 1}], [instances([[1, 1, 6, 6]], [0.9], [1])])
        evaluator.process([{"image_id": 2}], [instances([[60, 60, 90, 90]], [0.9], [0])])
        res = evaluator.evaluate()["bbox"]
    finally:
        forget(*registered)
    # the mean over the vocabulary's two categories (the background one has no AP either way)
    assert res["AP"] == pytest.approx(50.0)
    assert res["AP-black bishop"] == pytest.approx(100.0) and res["AP-white king"] == 0.0


@pytest.mark.parametrize("text", ["# only a comment\n", "{}\n", "- DATASETS\n- TEST\n"])
def test_protocol_that_is_no_mapping_of_keys_is_a_clear_error(tmp_path, text):
    path = tmp_path / "protocol.yaml"
    path.write_text(text)
    # a TypeError / AttributeError from inside yacs before
    with pytest.raises(ValueError, match="protocol.yaml is empty or not a mapping of config keys"):
        model_zoo.apply_protocol(_model_cfg(), str(path))
