"""SOLVER.MAX_EPOCH and fractional SOLVER.STEPS (official GLIP's solver), resolved into
iterations by glip_d2.engine.resolve_schedule and the train_net Trainer."""

import pytest
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer

from glip_d2 import add_glip_config
from glip_d2.engine import keep_fractional_steps, resolve_schedule


def _cfg(**solver):
    cfg = get_cfg()
    add_glip_config(cfg)
    for k, v in solver.items():
        cfg.SOLVER[k] = v
    return cfg


def test_epochs_and_fractional_steps_become_iterations():
    # official GLIP-T: 30 epochs at batch 64, LR steps at 0.67 and 0.89 of the run
    cfg = _cfg(MAX_EPOCH=30, IMS_PER_BATCH=64, STEPS=(0.67, 0.89), MAX_ITER=7)
    cfg.freeze()
    out = resolve_schedule(cfg, 1000)
    assert out.SOLVER.MAX_ITER == 30 * 1000 // 64 == 468
    assert out.SOLVER.STEPS == (314, 417)  # round(0.67 * 468), round(0.89 * 468)
    assert out.is_frozen() and cfg.SOLVER.MAX_ITER == 7  # a resolved copy; the input unchanged


def test_fractions_without_epochs_and_mixed_steps():
    out = resolve_schedule(_cfg(MAX_ITER=1000, STEPS=(0.5, 900)), lambda: pytest.fail("not needed"))
    assert out.SOLVER.MAX_ITER == 1000 and out.SOLVER.STEPS == (500, 900)


def test_iteration_schedules_are_left_as_they_are():
    cfg = _cfg(MAX_ITER=300000, STEPS=(201000, 267000))
    assert resolve_schedule(cfg, lambda: pytest.fail("the data size is not needed")) is cfg


def test_bad_epoch_schedules_are_clear_errors():
    with pytest.raises(ValueError, match="MAX_EPOCH 1 of 3 training images is less than one batch of SOLVER.IMS_PER_BATCH 4"):
        resolve_schedule(_cfg(MAX_EPOCH=1, IMS_PER_BATCH=4, STEPS=()), 3)
    # steps in iterations past the end of an epoch-length run would silently never apply
    with pytest.raises(ValueError, match=r"iterations \[1194\] beyond the 1000 iterations.*\(0.67, 0.89\)"):
        resolve_schedule(_cfg(MAX_EPOCH=10, IMS_PER_BATCH=4, STEPS=(896, 1194)), 400)


def test_auto_scaling_keeps_fractional_steps():
    """Detectron2's auto_scale_workers divides steps by the batch scale and rounds (0.67 -> 0);
    a fraction of the run is kept, iteration steps are scaled."""
    cfg = _cfg(REFERENCE_WORLD_SIZE=1, IMS_PER_BATCH=4, MAX_ITER=1000, STEPS=(0.67, 800))
    scaled = keep_fractional_steps(cfg.SOLVER.STEPS, DefaultTrainer.auto_scale_workers(cfg, 2))
    assert scaled.SOLVER.IMS_PER_BATCH == 8 and scaled.SOLVER.MAX_ITER == 500
    assert scaled.SOLVER.STEPS == (0.67, 400)
    assert resolve_schedule(scaled, 0).SOLVER.STEPS == (335, 400)


def test_checkpoint_and_evaluation_periods_in_epochs():
    """Official SOLVER.CHECKPOINT_PER_EPOCH (and TEST.EVAL_PER_EPOCH): an ODinW run of 12 epochs
    over 448 images at batch 4 checkpoints and evaluates once per epoch, 112 iterations."""
    cfg = _cfg(MAX_EPOCH=12, IMS_PER_BATCH=4, STEPS=(0.67, 0.89), CHECKPOINT_PER_EPOCH=1.0)
    cfg.TEST.EVAL_PER_EPOCH = 0.5
    out = resolve_schedule(cfg, 448)
    assert (out.SOLVER.MAX_ITER, out.SOLVER.STEPS) == (1344, (900, 1196))
    assert (out.SOLVER.CHECKPOINT_PERIOD, out.TEST.EVAL_PERIOD) == (112, 56)
    tiny = resolve_schedule(_cfg(MAX_EPOCH=12, IMS_PER_BATCH=4, STEPS=(), CHECKPOINT_PER_EPOCH=0.01), 8)
    assert tiny.SOLVER.CHECKPOINT_PERIOD == 1  # never 0 (Detectron2's checkpointer divides by it)
    with pytest.raises(ValueError, match="TEST.EVAL_PER_EPOCH need SOLVER.MAX_EPOCH > 0"):
        bad = _cfg(MAX_ITER=100, STEPS=())
        bad.TEST.EVAL_PER_EPOCH = 1.0
        resolve_schedule(bad, 448)


def test_periods_in_epochs_use_the_official_integer_formula():
    """Official trainer.py: checkpoint_period = len(data_loader) * CHECKPOINT_PER_EPOCH // MAX_EPOCH.
    30 iterations over 22 epochs, every 11 epochs: 30 * 11 // 22 = 15 (30 / 22 * 11 is
    14.999... in floating point, which truncated to 14)."""
    cfg = _cfg(MAX_EPOCH=22, IMS_PER_BATCH=22, STEPS=(), CHECKPOINT_PER_EPOCH=11.0)
    cfg.TEST.EVAL_PER_EPOCH = 11.0
    out = resolve_schedule(cfg, 30)
    assert out.SOLVER.MAX_ITER == 30
    assert (out.SOLVER.CHECKPOINT_PERIOD, out.TEST.EVAL_PERIOD) == (15, 15)


def _lrs(cfg, optimizer_steps):
    """The LR of each step of the scheduler train_net's Trainer builds from ``cfg``."""
    import torch

    from tests.reliability.helpers import load_train_net

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = load_train_net().Trainer.build_lr_scheduler(cfg, optimizer)
    out = []
    for _ in range(optimizer_steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_short_epoch_runs_build_their_lr_schedule():
    """A short MAX_EPOCH run (a few-shot set): 0.89 of 3 iterations rounds to 3 = MAX_ITER.
    Official GLIP's WarmupMultiStepLR runs it (that step never applies); Detectron2's
    MultiStepParamScheduler refused it ("Milestone must be smaller than total number of
    updates"), and 2 steps in 2 iterations ("Total num_updates must be greater ...")."""
    for images, want in ((6, [1, 1, 0.1]), (4, [1, 0.1]), (2, [1])):
        cfg = _cfg(MAX_EPOCH=1, IMS_PER_BATCH=2, STEPS=(0.67, 0.89), WARMUP_ITERS=0)
        out = resolve_schedule(cfg, images)
        assert out.SOLVER.MAX_ITER == len(want)
        assert _lrs(out, len(want)) == pytest.approx(want)
    # other schedules as Detectron2 builds them: steps in iterations, warmup
    cfg = _cfg(MAX_ITER=10, STEPS=(4, 8), WARMUP_ITERS=2, WARMUP_FACTOR=0.5)
    assert _lrs(cfg, 10) == pytest.approx([0.5, 0.75, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01])


def test_fractional_steps_that_round_together_are_a_clear_error():
    with pytest.raises(ValueError, match=r"SOLVER.STEPS \(0.5, 0.6\) round to iterations \(2, 2\) of the 4"):
        resolve_schedule(_cfg(MAX_EPOCH=1, IMS_PER_BATCH=2, STEPS=(0.5, 0.6)), 8)
    with pytest.raises(ValueError, match=r"round to iterations \(0, 3\) of the 4"):
        resolve_schedule(_cfg(MAX_ITER=4, STEPS=(0.1, 0.8)), 0)


@pytest.mark.parametrize("max_iter, steps", [(1_000_000, (670_000, 890_000)), (3_000_000, (2_000_001,)),
                                             (90_000, (60_000, 80_000))])
def test_lr_steps_fall_on_their_iteration_in_runs_of_millions(max_iter, steps):
    """GLIP-L trains 1M iterations with steps at 0.67 and 0.89 of them. fvcore adds 1e-6 of the run
    to find the step, a whole iteration from 1M iterations on: the LR dropped at 669,999."""
    import torch

    from tests.reliability.helpers import load_train_net

    cfg = _cfg(MAX_ITER=max_iter, STEPS=steps, WARMUP_ITERS=1000)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = load_train_net().Trainer.build_lr_scheduler(cfg, optimizer)
    for k, step in enumerate(steps):
        for it, lr in ((step - 1, 0.1 ** k), (step, 0.1 ** (k + 1))):
            scheduler.last_epoch = it  # the LR of iteration `it`
            assert scheduler.get_lr()[0] == pytest.approx(lr), (it, scheduler.get_lr())
    scheduler.last_epoch = max_iter - 1
    assert scheduler.get_lr()[0] == pytest.approx(0.1 ** len(steps))
