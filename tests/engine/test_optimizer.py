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
from glip_d2.engine import MainGroupLRScheduler, build_glip_optimizer, log_main_group_lr, resolve_schedule

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


# --------------------------------------------------------------- official parameter groups
OFFICIAL_KEYS = os.path.join(ROOT, "..", "shared", "parity", "official_keys_glip_t.txt")


def _official_make_optimizer_rule(key, base_lr=1e-4, lang_lr=1e-5, weight_decay=1e-4):
    """microsoft/GLIP maskrcnn_benchmark/solver/build.py make_optimizer, as GLIP-T runs it (the
    defaults BIAS_LR_FACTOR 2, WEIGHT_DECAY_BIAS 0, WEIGHT_DECAY_NORM_FACTOR 1,
    BACKBONE_BODY_LR_FACTOR 1), restated on official parameter names."""
    lr, decay = base_lr, weight_decay
    if "language_backbone" in key:
        lr = lang_lr
    if "bias" in key:
        lr, decay = lr * 2, 0.0
    return lr, decay


def test_official_param_groups_equal_the_official_rule_on_every_glip_t_parameter():
    """Each GLIP-T parameter, mapped to its official name by the checkpoint converter, gets the
    LR and weight decay the official make_optimizer gives that name."""
    from glip_d2.checkpoint import convert_official_state_dict
    from glip_d2.engine.optimizer import official_lr_and_decay

    if not os.path.isfile(OFFICIAL_KEYS):
        pytest.skip(f"official key list not found at {OFFICIAL_KEYS}")
    official = {}
    for i, line in enumerate(open(OFFICIAL_KEYS).read().splitlines()):
        key, shape, _dtype, kind = line.split("\t")
        if kind == "param":  # each tensor filled with its own index: the converter keeps values
            official[key] = torch.full([int(s) for s in shape.strip("[]").split(",") if s], float(i))
    converted, _ = convert_official_state_dict(official)
    name_of = {float(v): k[len("module."):] for k, v in ((k, t.flatten()[0]) for k, t in official.items())}
    checked = 0
    for ours, tensor in converted.items():
        theirs = name_of[float(tensor.flatten()[0])]
        got = official_lr_and_decay(ours, 1e-4, 1e-4, 0.1, bias_lr_factor=2.0, weight_decay_bias=0.0)
        assert got == pytest.approx(_official_make_optimizer_rule(theirs), rel=1e-9), (ours, theirs)
        checked += 1
    assert checked > 700


def test_glip_configs_build_the_official_groups_and_demos_keep_theirs():
    from detectron2.modeling import build_model

    from tests.helpers import tiny_cfg

    cfg = tiny_cfg()
    cfg.MODEL.LANGUAGE_BACKBONE.FREEZE = False
    glip_t = add_glip_config(get_cfg())
    glip_t.merge_from_file(os.path.join(ROOT, "configs", "glip_swin_t.yaml"))
    for key in ("PARAM_GROUPS", "BIAS_LR_FACTOR", "WEIGHT_DECAY_BIAS", "BASE_LR", "WEIGHT_DECAY"):
        cfg.SOLVER[key] = glip_t.SOLVER[key]
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = build_glip_optimizer(cfg, model)
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_param[id(named["head.scorer.bias0"])] == pytest.approx((2e-4, 0.0))
    assert by_param[id(named["head.bbox_pred.weight"])] == pytest.approx((1e-4, 1e-4))
    norm = next(n for n in named if n.startswith("backbone.") and n.endswith("norm1.weight"))
    assert by_param[id(named[norm])] == pytest.approx((1e-4, 1e-4))  # norms are decayed
    lang_bias = next(n for n in named if n.startswith("language_backbone.") and n.endswith(".bias"))
    assert by_param[id(named[lang_bias])] == pytest.approx((2e-5, 0.0))
    demo = add_glip_config(get_cfg())
    demo.merge_from_file(os.path.join(ROOT, "configs", "demo_glip_tiny_shapes.yaml"))
    assert (demo.SOLVER.PARAM_GROUPS, demo.SOLVER.EMA_DECAY) == ("no_decay_1d", 0.0)
    assert (glip_t.SOLVER.PARAM_GROUPS, glip_t.SOLVER.EMA_DECAY) == ("official", 0.999)
    assert not glip_t.TEST.USE_EMA  # the official code evaluates the raw weights
    glip_l = add_glip_config(get_cfg())  # official glip_Swin_L.yaml
    glip_l.merge_from_file(os.path.join(ROOT, "configs", "glip_swin_l.yaml"))
    s = glip_l.SOLVER
    assert (s.WEIGHT_DECAY, s.WEIGHT_DECAY_SCHEDULE, s.MAX_ITER, s.STEPS, s.AMP.ENABLED, s.EMA_DECAY) == (
        0.01, True, 1000000, (0.67, 0.89), False, 0.0)
    assert resolve_schedule(glip_l, 0).SOLVER.STEPS == (670000, 890000)  # what the trainer runs
    # official GLIP-T: 30 epochs at batch 64, steps at 0.67 / 0.89 of the run
    s = glip_t.SOLVER
    assert (s.MAX_EPOCH, s.STEPS, s.IMS_PER_BATCH) == (30, (0.67, 0.89), 64)
    resolved = resolve_schedule(glip_t, 1_000_000).SOLVER
    assert (resolved.MAX_ITER, resolved.STEPS) == (468750, (314062, 417188))
    cfg.SOLVER.PARAM_GROUPS = "nonsense"
    with pytest.raises(ValueError, match="SOLVER.PARAM_GROUPS must be one of"):
        build_glip_optimizer(cfg, model)


def test_full_model_clipping_at_zero_is_off_as_in_the_official_code():
    cfg = add_glip_config(get_cfg())
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    steps = {}
    for value in (0.0, 1e9):  # 0 = off; 1e9 never binds: both must take the same step
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = value
        model = _LangModel()
        opt = build_glip_optimizer(cfg, model)
        loss = sum(p.sum() for p in model.parameters())
        loss.backward()
        opt.step()
        steps[value] = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(steps[0.0], steps[1e9]))


def test_weight_decay_schedule_drops_once_at_the_official_iterations():
    """Official GLIP-L: weight decay x gamma at 0.667 of each LR step, once each."""
    from glip_d2.engine import WeightDecaySchedule

    opt = torch.optim.AdamW([{"params": [nn.Parameter(torch.zeros(1))], "weight_decay": 0.01},
                             {"params": [nn.Parameter(torch.zeros(1))], "weight_decay": 0.0}])
    hook = WeightDecaySchedule(opt, steps=(300, 450), gamma=0.1, ratio=0.667)
    hook.trainer = SimpleNamespace(iter=0)
    seen = {}
    for it in range(400):
        hook.trainer.iter = it
        hook.after_step()
        seen[it + 1] = opt.param_groups[0]["weight_decay"]
    # 300 x 0.667 = 200.1 -> after the 201st iteration; 450 x 0.667 = 300.15 -> after the 301st
    assert seen[200] == 0.01 and seen[201] == pytest.approx(0.001)
    assert seen[300] == pytest.approx(0.001) and seen[301] == pytest.approx(0.0001)
    assert seen[400] == pytest.approx(0.0001) and opt.param_groups[1]["weight_decay"] == 0.0
