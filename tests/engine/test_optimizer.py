"""Solver: add_glip_config keeps stock Detectron2 configs' meaning; GLIP configs use AdamW; the
logged LR is the main group's."""

import glob
import os
from types import SimpleNamespace

import pytest
import torch
from detectron2 import model_zoo as d2_model_zoo
from detectron2.config import get_cfg
from detectron2.engine import hooks
from detectron2.solver import build_lr_scheduler, build_optimizer
from detectron2.utils.events import EventStorage
from torch import nn

from glip_d2 import add_glip_config
from glip_d2.engine import MainGroupLRScheduler, build_glip_optimizer, log_main_group_lr

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _LangModel(nn.Module):
    """A detector-shaped toy: a conv + BN "backbone" and a larger "language_backbone"."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.language_backbone = nn.Sequential(*[nn.Linear(4, 4) for _ in range(6)])


def _walk(node, prefix=""):
    for k, v in node.items():
        if hasattr(v, "items"):
            yield from _walk(v, prefix + k + ".")
        else:
            yield prefix + k, v


def test_add_glip_config_changes_no_detectron2_key():
    stock = dict(_walk(get_cfg()))
    extended = dict(_walk(add_glip_config(get_cfg())))
    changed = {k: (v, extended[k]) for k, v in stock.items() if extended[k] != v}
    assert changed == {}
    assert extended["SOLVER.OPTIMIZER"] == "SGD"


def test_stock_faster_rcnn_config_keeps_detectron2_sgd():
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(d2_model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    assert (cfg.SOLVER.OPTIMIZER, cfg.SOLVER.BASE_LR) == ("SGD", 0.02)
    cfg.SOLVER.BIAS_LR_FACTOR, cfg.SOLVER.WEIGHT_DECAY_BIAS = 2.0, 0.0  # exercised, not default
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    ours, theirs = build_glip_optimizer(cfg, model), build_optimizer(cfg, model)
    assert isinstance(ours, torch.optim.SGD) and not isinstance(ours, torch.optim.AdamW)

    def summary(opt):
        keys = ("lr", "weight_decay", "momentum", "nesterov")
        return sorted(
            (tuple(g[k] for k in keys), sorted(id(p) for p in g["params"])) for g in opt.param_groups
        )

    assert summary(ours) == summary(theirs)


def test_sgd_scales_the_language_backbone():
    cfg = add_glip_config(get_cfg())
    cfg.SOLVER.BASE_LR = 0.02
    model = _LangModel()
    opt = build_glip_optimizer(cfg, model)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        expected = 0.002 if name.startswith("language_backbone.") else 0.02
        assert lr_of[id(p)] == pytest.approx(expected), name


def _config_files():
    files = glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    return sorted(f for f in files if os.sep + "protocols" + os.sep not in f)


@pytest.mark.parametrize("path", _config_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_glip_config_sets_adamw(path):
    cfg = add_glip_config(get_cfg())
    cfg.merge_from_file(path)
    assert cfg.SOLVER.OPTIMIZER == "ADAMW"


def _train_steps(optimizer, cfg, hook, n=3):
    trainer = SimpleNamespace(optimizer=optimizer, scheduler=build_lr_scheduler(cfg, optimizer),
                              max_iter=cfg.SOLVER.MAX_ITER, iter=0, start_iter=0)
    hook.trainer = trainer
    logged = []
    with EventStorage() as storage:
        trainer.storage = storage
        hook.before_train()
        for it in range(n):
            storage.iter = trainer.iter = it
            hook.after_step()
            logged.append(storage.history("lr").latest())
    return logged


def test_logged_lr_is_the_main_group():
    cfg = add_glip_config(get_cfg())
    # The toy's text encoder has more parameters than the rest, as BERT-base has next to a R-50.
    cfg.SOLVER.BASE_LR, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.MAX_ITER = 1e-3, 0, 10
    for optimizer in ("ADAMW", "SGD"):
        cfg.SOLVER.OPTIMIZER = optimizer
        stock = _train_steps(build_glip_optimizer(cfg, _LangModel()), cfg, hooks.LRScheduler())
        assert stock[0] == pytest.approx(1e-4)  # Detectron2's heuristic picks the text encoder
        ours = _train_steps(build_glip_optimizer(cfg, _LangModel()), cfg, MainGroupLRScheduler(1e-3))
        assert ours == pytest.approx([1e-3] * 3)


def test_log_main_group_lr_replaces_only_the_lr_hook():
    timer, lr = hooks.IterationTimer(), hooks.LRScheduler()
    out = log_main_group_lr([timer, lr], 0.01)
    assert out[0] is timer and type(out[1]) is MainGroupLRScheduler and out[1].base_lr == 0.01
