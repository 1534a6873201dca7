"""The predictor and the demo CLI take the two-stage language-aware R-CNN like the one-stage GLIP."""

import json

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from glip_d2 import demo
from glip_d2.predictor import GLIPPredictor
from tests.roi.roi_helpers import two_stage_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def two_stage(module_tmp):
    root = module_tmp("roi_predictor")
    torch.manual_seed(0)
    cfg = two_stage_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 128
    cfg.TEST.DETECTIONS_PER_IMAGE = 5
    model = build_model(cfg)
    torch.save({"model": model.state_dict()}, root / "model.pth")
    cfg.MODEL.WEIGHTS = str(root / "model.pth")
    (root / "two_stage.yaml").write_text(cfg.dump())
    image = np.random.default_rng(0).integers(0, 256, (80, 120, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "x.png")
    return {"cfg": cfg, "root": root, "image": image, "state": model.state_dict()}


def test_roi_predictor_detects_a_vocabulary_and_grounds_a_caption(two_stage):
    pred = GLIPPredictor(two_stage["cfg"])
    assert type(pred.model).__name__ == "LanguageAwareRCNN" and not pred.model.training
    torch.testing.assert_close(
        pred.model.state_dict()["roi_heads.box_predictor.region_proj.weight"],
        two_stage["state"]["roi_heads.box_predictor.region_proj.weight"],
    )
    vocab = ["purple star", "yellow cross", "red circle", "green square"]
    inst = pred(two_stage["image"], vocabulary=vocab)["instances"]
    assert inst.image_size == (80, 120) and 0 < len(inst) <= 5
    assert inst.pred_classes.max() < len(vocab)
    boxes = inst.pred_boxes.tensor
    assert (boxes[:, 0::2] <= 120).all() and (boxes[:, 1::2] <= 80).all()
    out = pred(two_stage["image"], caption="a red circle next to a green square")
    grounded = out["instances"]
    assert len(grounded) > 0 and grounded.pred_classes.max() < 2  # two noun phrases


def test_roi_demo_cli_writes_detections_for_a_two_stage_checkpoint(two_stage, capsys, tmp_path):
    out = tmp_path / "out"
    status = demo.main([
        "--config-file", str(two_stage["root"] / "two_stage.yaml"),
        "--input", str(two_stage["root"] / "x.png"),
        "--custom-vocabulary", "red circle,blue square",
        "--confidence-threshold", "0.0",
        "--output", str(out),
    ])
    assert status == 0
    jsons = list(out.glob("*.json"))
    assert jsons, list(out.iterdir())
    dets = json.loads(jsons[0].read_text())
    assert dets  # some detections with names from the custom vocabulary
    text = json.dumps(dets)
    assert "red circle" in text or "blue square" in text
