"""Review of the engine and checkpoint code: resume across stacks, EMA, optimizer groups."""

import pytest
import torch
from detectron2.engine import AMPTrainer, SimpleTrainer, TrainerBase
from torch import nn

from tests.reliability.helpers import load_train_net


@pytest.fixture(scope="module")
def train_net():
    return load_train_net()


def _trainer(train_net, amp: bool):
    """train_net's Trainer around a one-layer model (only its state-dict handling is used)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = train_net.Trainer.__new__(train_net.Trainer)
    TrainerBase.__init__(trainer)
    if amp:  # a CPU scaler, so that it is enabled and has a state on this machine
        scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
        trainer._trainer = AMPTrainer(model, [None], optimizer, grad_scaler=scaler)
    else:
        trainer._trainer = SimpleTrainer(model, [None], optimizer)
    return trainer


def test_a_run_without_amp_resumes_with_amp_and_the_other_way_round(train_net):
    """A checkpoint of a float32 run (SimpleTrainer: no "grad_scaler") resumed with
    SOLVER.AMP.ENABLED: iteration and optimizer are restored and the gradient scaler keeps its
    fresh state (before: KeyError 'grad_scaler' from Detectron2's AMPTrainer)."""
    fp32 = _trainer(train_net, amp=False)
    fp32.iter = 41
    fp32.optimizer.param_groups[0]["lr"] = 0.025
    state = fp32.state_dict()
    assert "grad_scaler" not in state["_trainer"]
    amp = _trainer(train_net, amp=True)
    amp.load_state_dict(state)
    assert amp.iter == 41 and amp.optimizer.param_groups[0]["lr"] == 0.025
    assert amp._trainer.grad_scaler.get_scale() == 8.0
    assert "grad_scaler" not in state["_trainer"]  # the caller's dict is left as it was
    # an AMP checkpoint restores its scaler, and resumes without AMP (the scaler's state unused)
    amp_state = amp.state_dict()
    amp_state["_trainer"]["grad_scaler"]["scale"] = 2.0
    other = _trainer(train_net, amp=True)
    other.load_state_dict(amp_state)
    assert other._trainer.grad_scaler.get_scale() == 2.0
    again = _trainer(train_net, amp=False)
    again.load_state_dict(amp_state)
    assert again.iter == 41 and again.optimizer.param_groups[0]["lr"] == 0.025


class _FakeCuda:
    """torch.cuda's RNG functions on a machine with ``count`` GPUs, the process on ``current``;
    like torch, setting the state of a device that does not exist raises IndexError."""

    def __init__(self, count: int, current: int = 0):
        self.count, self.current = count, current
        self.states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(count)}

    def install(self, monkeypatch):
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(cuda, "get_rng_state", self.get)
        monkeypatch.setattr(cuda, "set_rng_state", self.set)
        monkeypatch.setattr(cuda, "get_rng_state_all", lambda: [self.get(i) for i in range(self.count)])
        monkeypatch.setattr(cuda, "set_rng_state_all", lambda states: [self.set(s, i) for i, s in enumerate(states)])

    def _index(self, device):
        index = self.current if device == "cuda" else int(device)
        if index >= self.count:
            raise IndexError("tuple index out of range")
        return index

    def get(self, device="cuda"):
        return self.states[self._index(device)].clone()

    def set(self, state, device="cuda"):
        self.states[self._index(device)] = state.clone()


def test_the_cuda_rng_state_resumes_on_a_machine_with_fewer_gpus(monkeypatch):
    """A process's CUDA RNG state, saved on a machine with 4 visible GPUs (process on GPU 3),
    restored on one with a single GPU (same number of processes, e.g. CUDA_VISIBLE_DEVICES=3):
    the process's own generator gets its state (before: every visible GPU's state was saved and
    restored, so the resume stopped with IndexError, and a process on another GPU index got
    the state of the wrong device)."""
    from glip_d2.engine import get_rng_state, set_rng_state

    saved_on = _FakeCuda(count=4, current=3)
    saved_on.states[3] = torch.full((16,), 77, dtype=torch.uint8)
    saved_on.install(monkeypatch)
    state = get_rng_state()
    resumed_on = _FakeCuda(count=1, current=0)
    resumed_on.install(monkeypatch)
    set_rng_state(state)
    assert torch.equal(resumed_on.states[0], torch.full((16,), 77, dtype=torch.uint8))


def test_a_fixed_vocabulary_that_is_not_a_test_sets_classes_stops_before_training(train_net, capsys):
    """MODEL.GLIP.VOCABULARY in another order than a DATASETS.TEST set's classes is refused by
    the start-up checks (``train_net.py``: one message, exit 2), not at the first evaluation,
    after TEST.EVAL_PERIOD (or all) of the training iterations."""
    import argparse

    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from glip_d2 import add_glip_config

    name = "review_engine_fixed_vocabulary"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(thing_classes=["cat", "dog"], evaluator_type="coco")
    try:
        cfg = get_cfg()
        add_glip_config(cfg)
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (), (name,)
        cfg.MODEL.GLIP.VOCABULARY, cfg.MODEL.WEIGHTS = ["cat", "dog"], "weights.pth"
        for eval_only in (False, True):
            train_net.check_setup(cfg, argparse.Namespace(eval_only=eval_only, resume=False))
        cfg.MODEL.GLIP.VOCABULARY = ["dog", "cat"]
        with pytest.raises(ValueError, match=f"not the class list of '{name}'"):
            train_net.check_setup(cfg, argparse.Namespace(eval_only=False, resume=False))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
