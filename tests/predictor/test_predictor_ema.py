"""GLIPPredictor runs the weights ``train_net.py --eval-only`` evaluates: a checkpoint's "ema"
entry when TEST.USE_EMA, else its raw weights."""

import logging

import pytest
import torch
from detectron2.modeling import build_model

from glip_d2.predictor import GLIPPredictor
from tests.helpers import tiny_cfg

KEY = "head.scorer.bias0"  # a parameter: the EMA averages it


@pytest.fixture(scope="module")
def checkpoint(module_tmp):
    """A tiny GLIP's checkpoint with raw weights and an EMA that differs from them."""
    torch.manual_seed(0)
    cfg = tiny_cfg()
    cfg.MODEL.DYHEAD.NUM_CONVS = 1
    raw = build_model(cfg).state_dict()
    ema = {k: v + 0.5 if v.is_floating_point() else v.clone() for k, v in raw.items()}
    path = module_tmp("ema") / "model_final.pth"
    torch.save({"model": raw, "ema": ema, "iteration": 9}, path)
    cfg.MODEL.WEIGHTS = str(path)
    return cfg, raw, ema


def test_predictor_evaluates_the_ema_with_test_use_ema(checkpoint, caplog):
    cfg, raw, ema = checkpoint
    cfg = cfg.clone()
    cfg.TEST.USE_EMA = True  # the default (Base-GLIP.yaml turns it off, as the official code)
    with caplog.at_level(logging.INFO, logger="glip_d2.predictor"):
        pred = GLIPPredictor(cfg)
    assert torch.equal(pred.model.state_dict()[KEY], ema[KEY])
    assert not torch.equal(pred.model.state_dict()[KEY], raw[KEY])
    assert pred.weights_used == "ema"
    assert "EMA weights" in caplog.text and cfg.MODEL.WEIGHTS in caplog.text


def test_predictor_keeps_the_raw_weights_without_test_use_ema(checkpoint, caplog):
    cfg, raw, _ = checkpoint
    cfg = cfg.clone()
    cfg.TEST.USE_EMA = False
    with caplog.at_level(logging.INFO, logger="glip_d2.predictor"):
        pred = GLIPPredictor(cfg)
    assert pred.weights_used == "model"
    assert torch.equal(pred.model.state_dict()[KEY], raw[KEY])
    assert "TEST.USE_EMA is off" in caplog.text


def test_predictor_without_an_ema_in_the_checkpoint_runs_its_weights(checkpoint, tmp_path):
    cfg, raw, _ = checkpoint
    path = tmp_path / "no_ema.pth"
    torch.save({"model": raw}, path)
    cfg = cfg.clone()
    cfg.TEST.USE_EMA = True
    cfg.MODEL.WEIGHTS = str(path)
    pred = GLIPPredictor(cfg)
    assert pred.weights_used == "model"
    assert torch.equal(pred.model.state_dict()[KEY], raw[KEY])
