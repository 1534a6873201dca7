"""SOLVER.FIND_UNUSED_PARAMETERS (official default True) reaches DistributedDataParallel: with it, a
trainable parameter that gets no gradient does not stop two-process training; without it DDP
stops at the second step, which is why the default follows the official GLIP."""

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from glip_d2 import add_glip_config
from tests.conftest import forget
from tests.gloo import run_gloo_workers


class _HalfUsed(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 1)
        self.unused = nn.Linear(4, 1)  # e.g. a head whose loss is switched off

    def forward(self, x):
        return self.used(x).sum()


def _two_steps(model):
    for step in range(2):
        model(torch.full((2, 4), float(step + 1))).backward()


def _worker(rank, world, result_file):
    from glip_d2.engine import create_glip_ddp_model

    torch.manual_seed(0)
    _two_steps(create_glip_ddp_model(_HalfUsed(), find_unused_parameters=True))
    try:
        _two_steps(create_glip_ddp_model(_HalfUsed(), find_unused_parameters=False))
        stopped = ""
    except RuntimeError as error:
        stopped = str(error)
    if rank == 0:
        torch.save({"stopped": stopped}, result_file)


@pytest.mark.heavy(10)
def test_ddp_trains_past_an_unused_parameter_only_with_find_unused_parameters(tmp_path):
    run_gloo_workers(_worker, 2, tmp_path, str(tmp_path / "result.pt"))
    stopped = torch.load(tmp_path / "result.pt")["stopped"]
    assert "finished reduction" in stopped  # DDP's own message, at the second step


def test_the_trainer_passes_the_key_to_ddp(monkeypatch, tmp_path):
    from tests.reliability.helpers import load_train_net
    from tests.reliability.test_exact_resume import train_cfg

    train_net = load_train_net()
    cfg = get_cfg()
    add_glip_config(cfg)
    assert cfg.SOLVER.FIND_UNUSED_PARAMETERS is True
    seen = []
    monkeypatch.setattr(train_net, "create_glip_ddp_model", lambda model, **kw: seen.append(kw) or model)
    try:
        for value in ("True", "False"):
            cfg = train_net.setup(train_net.argument_parser().parse_args(
                ["--config-file", train_cfg(tmp_path, tmp_path / f"out_{value}"), "SOLVER.MAX_ITER", "1",
                 "SOLVER.STEPS", "()", "SOLVER.FIND_UNUSED_PARAMETERS", value]))
            train_net.Trainer(cfg)
    finally:
        forget("resume_shapes_train")  # the config registers its training set under this name
    assert [kw["find_unused_parameters"] for kw in seen] == [True, False]
    assert all(kw["broadcast_buffers"] is False for kw in seen)
