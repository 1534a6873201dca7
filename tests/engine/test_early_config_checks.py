"""Values that used to be checked only when first used (the first evaluation, after a whole
training run with TEST.EVAL_PERIOD 0) or never: they are refused before training."""
import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from glip_d2 import add_glip_config
from glip_d2.engine import build_glip_optimizer, check_benchmark_options


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("REFCOCO_MATCH", "IoU", "REFCOCO_MATCH must be 'giou' or 'iou'"),
        ("LVIS_MAX_DETS_PER_IMAGE", 0, "LVIS_MAX_DETS_PER_IMAGE must be a positive integer"),
        ("COCO_MAX_DETS_PER_IMAGE", 0, "COCO_MAX_DETS_PER_IMAGE must be a positive integer"),
    ],
)
def test_benchmark_options_are_checked_before_training(key, value, words):
    cfg = add_glip_config(get_cfg())
    check_benchmark_options(cfg)  # the defaults pass
    setattr(cfg.TEST.BENCHMARK, key, value)
    with pytest.raises(ValueError, match=words):
        check_benchmark_options(cfg)


def test_train_net_check_setup_runs_them(tmp_path):
    from tests.reliability.helpers import fast_tiny_cfg, load_train_net

    train_net = load_train_net()
    cfg = fast_tiny_cfg()
    cfg.TEST.BENCHMARK.REFCOCO_MATCH = "iou50"
    args = train_net.argument_parser().parse_args(["--config-file", "x.yaml"])
    with pytest.raises(ValueError, match="REFCOCO_MATCH"):
        train_net.check_setup(cfg, args)


def test_a_misspelt_param_groups_rule_is_refused_under_sgd_too():
    # SGD does not use SOLVER.PARAM_GROUPS: a typo was accepted and did nothing
    cfg = add_glip_config(get_cfg())
    cfg.SOLVER.OPTIMIZER, cfg.SOLVER.PARAM_GROUPS = "SGD", "offical"
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="SOLVER.PARAM_GROUPS must be one of"):
        build_glip_optimizer(cfg, model)
    cfg.SOLVER.PARAM_GROUPS = "official"  # a valid rule: SGD keeps Detectron2's groups
    assert isinstance(build_glip_optimizer(cfg, model), torch.optim.SGD)
