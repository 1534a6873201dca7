"""train_net.py's Trainer: evaluation with EMA weights, the test loader's batch size."""

import logging

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine.hooks import CallbackHook
from torch import nn

from glip_d2 import add_glip_config
from glip_d2.engine import ModelEMA
from tests.reliability.helpers import load_train_net


@pytest.fixture(scope="module")
def train_net():
    return load_train_net()


@pytest.fixture
def resume_dataset():
    """The training set of tests.reliability.test_exact_resume.train_cfg, registered under a fixed
    name by the config: removed after each test, so the next one registers its own files."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    yield
    if "resume_shapes_train" in DatasetCatalog.list():
        DatasetCatalog.remove("resume_shapes_train")
        MetadataCatalog.remove("resume_shapes_train")


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


def test_ema_starts_at_the_loaded_weights_and_checkpoints_hold_the_last_steps_ema(train_net, tmp_path,
                                                                                resume_dataset):
    """The EMA is (re)started after MODEL.WEIGHTS is loaded, not at the random init, and updates
    before the checkpointer, so model_final.pth holds the EMA of the final weights."""
    from detectron2.modeling import build_model

    from tests.reliability.test_exact_resume import train_cfg

    cfg_file = train_cfg(tmp_path, tmp_path / "out")
    cfg = train_net.setup(train_net.argument_parser().parse_args(
        ["--config-file", cfg_file, "SOLVER.EMA_DECAY", "0.5", "SOLVER.MAX_ITER", "2"]))
    torch.manual_seed(123)
    pretrained = build_model(cfg)
    with torch.no_grad():
        for p in pretrained.parameters():
            p.add_(1.0)
    torch.save({"model": pretrained.state_dict()}, tmp_path / "pretrained.pth")
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(tmp_path / "pretrained.pth")
    cfg.freeze()
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    for k, v in pretrained.state_dict().items():
        assert torch.equal(trainer.ema.shadow[k], v), k
    trainer.train()
    final = torch.load(tmp_path / "out" / "model_final.pth", weights_only=True)
    for k, v in trainer.ema.state_dict().items():
        assert torch.equal(final["ema"][k], v), k


def test_a_fixed_vocabulary_must_be_the_test_datasets_classes(names):
    """The evaluator reads labels as the dataset's class indices: a fixed MODEL.GLIP.VOCABULARY in
    another order is an error, not an AP scored against the wrong classes."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from glip_d2.engine import check_fixed_vocabulary

    name = names("fixed_vocab")
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(thing_classes=["cat", "dog"], evaluator_type="coco")
    check_fixed_vocabulary(["cat", "dog"], name)
    with pytest.raises(ValueError, match="first difference at index 0.*Leave MODEL.GLIP.VOCABULARY empty"):
        check_fixed_vocabulary(["dog", "cat"], name)
    with pytest.raises(ValueError, match="1 names"):
        check_fixed_vocabulary(["cat"], name)
    grounding = names("fixed_vocab_grounding")
    MetadataCatalog.get(grounding).set(evaluator_type="refcoco")
    check_fixed_vocabulary(["anything"], grounding)  # captions carry their own phrases


def test_weight_decay_schedule_runs_in_the_trainer(train_net, tmp_path, resume_dataset):
    """GLIP-L's SOLVER.WEIGHT_DECAY_SCHEDULE through train_net: the decay of every group drops by
    GAMMA once, at 0.667 of the LR step, and the checkpoint holds the dropped value."""
    from tests.reliability.test_exact_resume import train_cfg

    cfg_file = train_cfg(tmp_path, tmp_path / "out")
    cfg = train_net.setup(train_net.argument_parser().parse_args(
        ["--config-file", cfg_file, "SOLVER.MAX_ITER", "5", "SOLVER.STEPS", "(6,)",
         "SOLVER.WEIGHT_DECAY_SCHEDULE", "True", "SOLVER.WEIGHT_DECAY", "0.01"]))
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    before = sorted({g["weight_decay"] for g in trainer.optimizer.param_groups})
    trainer.train()  # 6 x 0.667 = 4.002: the drop follows the 5th iteration
    after = sorted({g["weight_decay"] for g in trainer.optimizer.param_groups})
    assert 0.01 in before and after == pytest.approx([d * 0.1 for d in before])
    final = torch.load(tmp_path / "out" / "model_final.pth", weights_only=True)
    saved = final["trainer"]["_trainer"]["optimizer"]["param_groups"]
    assert sorted({g["weight_decay"] for g in saved}) == pytest.approx(after)


def test_weight_decay_schedule_is_off_without_lr_steps(train_net, tmp_path, resume_dataset, caplog,
                                                      monkeypatch):
    """As official (it follows the scheduler's milestones): with a cosine LR schedule there are no
    steps to follow, so the weight decay stays, and the log says why."""
    from glip_d2.engine import WeightDecaySchedule
    from tests.reliability.test_exact_resume import train_cfg

    cfg = train_net.setup(train_net.argument_parser().parse_args(
        ["--config-file", train_cfg(tmp_path, tmp_path / "out"), "SOLVER.MAX_ITER", "5",
         "SOLVER.STEPS", "(6,)", "SOLVER.WEIGHT_DECAY_SCHEDULE", "True",
         "SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR"]))
    # setup's setup_logger stops "glip_d2" from propagating to the root, where caplog listens
    monkeypatch.setattr(logging.getLogger("glip_d2"), "propagate", True)
    with caplog.at_level("WARNING", logger="glip_d2"):
        trainer = train_net.Trainer(cfg)
    assert not any(isinstance(h, WeightDecaySchedule) for h in trainer._hooks)
    assert "WEIGHT_DECAY_SCHEDULE is off" in caplog.text and "WarmupCosineLR" in caplog.text


def test_epoch_schedule_runs_in_the_trainer(train_net, tmp_path, resume_dataset):
    """SOLVER.MAX_EPOCH, a fractional step and CHECKPOINT_PER_EPOCH through train_net: 1 epoch of
    the 10 training images at batch 2 is 5 iterations; the LR step at 0.6 of them falls at
    iteration 3."""
    from tests.reliability.test_exact_resume import train_cfg

    cfg_file = train_cfg(tmp_path, tmp_path / "out")
    cfg = train_net.setup(train_net.argument_parser().parse_args(
        ["--config-file", cfg_file, "SOLVER.MAX_ITER", "1000", "SOLVER.MAX_EPOCH", "1",
         "SOLVER.STEPS", "(0.6,)", "SOLVER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PER_EPOCH", "0.4"]))
    trainer = train_net.Trainer(cfg)
    assert trainer.max_iter == 5 and trainer.cfg.SOLVER.MAX_ITER == 5
    assert trainer.cfg.SOLVER.STEPS == (3,)
    trainer.resume_or_load(resume=False)
    lrs = []
    group = trainer.optimizer.param_groups[0]
    trainer.register_hooks([CallbackHook(after_step=lambda t: lrs.append(group["lr"] / group["initial_lr"]))])
    trainer.train()
    # the LR after each step's scheduler update: the drop by GAMMA from iteration 3 on
    assert trainer.iter == 5 and lrs == pytest.approx([1, 1, 0.1, 0.1, 0.1], rel=1e-6)
    # 0.4 epochs = 2 iterations between checkpoints
    assert sorted(p.name for p in (tmp_path / "out").glob("model_*.pth")) == [
        "model_0000001.pth", "model_0000003.pth", "model_final.pth"]


def test_resume_restores_the_lr_schedule_of_a_checkpoint_with_the_stock_hook_key(train_net, tmp_path,
                                                                                 resume_dataset):
    """Checkpoints written before the LR hook logged the main group (and Detectron2's own) keep
    the scheduler under the hook name "LRScheduler": a resume restores it, instead of warning
    and restarting the LR schedule (warmup again) at the resumed iteration."""
    from tests.reliability.test_exact_resume import train_cfg

    cfg_file = train_cfg(tmp_path, tmp_path / "out")
    cfg = train_net.setup(train_net.argument_parser().parse_args(["--config-file", cfg_file]))
    trainer = train_net.Trainer(cfg)
    for _ in range(4):
        trainer.scheduler.step()
    state = trainer.state_dict()
    hooks_state = state["hooks"]
    assert "MainGroupLRScheduler" in hooks_state or "LRScheduler" in hooks_state
    legacy = dict(state, hooks={("LRScheduler" if k == "MainGroupLRScheduler" else k): v
                               for k, v in hooks_state.items()})
    assert legacy["hooks"]["LRScheduler"]["last_epoch"] == 4
    fresh = train_net.Trainer(cfg)
    assert fresh.scheduler.last_epoch == 0
    fresh.load_state_dict(legacy)
    assert fresh.scheduler.last_epoch == 4
    fresh2 = train_net.Trainer(cfg)
    fresh2.load_state_dict(state)  # and the checkpoints this version writes
    assert fresh2.scheduler.last_epoch == 4
