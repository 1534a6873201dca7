"""train_net.py's Trainer: evaluation with EMA weights, the test loader's batch size."""

import importlib.util
import os

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from glip_d2 import add_glip_config
from glip_d2.engine import ModelEMA

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def train_net():
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(ROOT, "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_trainer_evaluates_with_the_ema_weights(train_net, monkeypatch):
    net = _net()
    ema = ModelEMA(net, decay=0.5)
    ema.shadow["0.bias"].fill_(-4.0)
    seen = []
    monkeypatch.setattr(
        train_net.Trainer, "test", classmethod(lambda cls, cfg, model, ev=None: seen.append(model[0].bias.clone()) or {})
    )
    trainer = train_net.Trainer.__new__(train_net.Trainer)  # only the EMA part of the trainer
    trainer.ema = ema
    trainer._test_with_ema(None, net)
    assert torch.equal(seen[0], torch.full((2,), -4.0))
    assert not torch.equal(net[0].bias, torch.full((2,), -4.0))  # training weights restored


def test_trainer_test_loader_uses_test_ims_per_batch(train_net, monkeypatch):
    seen = {}
    monkeypatch.setattr(
        train_net, "build_detection_test_loader",
        lambda cfg, name, mapper, batch_size: seen.update(name=name, batch_size=batch_size),
    )
    cfg = get_cfg()
    add_glip_config(cfg)
    assert cfg.TEST.IMS_PER_BATCH == 1
    cfg.TEST.IMS_PER_BATCH = 8
    train_net.Trainer.build_test_loader(cfg, "shapes_val")
    assert seen == {"name": "shapes_val", "batch_size": 8}
