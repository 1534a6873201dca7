"""Training length in epochs and LR steps as fractions of it, as official GLIP's solver reads
them (``SOLVER.MAX_EPOCH``; ``SOLVER.STEPS (0.67, 0.89)``), resolved into Detectron2's
iteration counts once the training set is loaded."""
import logging
from typing import Sequence

from detectron2.solver import build_lr_scheduler
from fvcore.common.param_scheduler import (CompositeParamScheduler, MultiStepParamScheduler,
                                           ParamScheduler)

__all__ = [
    "build_glip_lr_scheduler",
    "check_checkpoint_period",
    "keep_fractional_steps",
    "resolve_schedule",
]

logger = logging.getLogger(__name__)


def _is_fraction(step) -> bool:
    return 0 < step < 1


def resolve_schedule(cfg, num_images: int):
    """``cfg`` with ``SOLVER.MAX_ITER`` and ``SOLVER.STEPS`` in iterations.

    - ``SOLVER.MAX_EPOCH`` > 0: ``MAX_ITER = MAX_EPOCH * num_images // IMS_PER_BATCH`` (official
      GLIP's formula, over the concatenated training sets after filtering).
    - A step in (0, 1) is that fraction of ``MAX_ITER``, rounded (official GLIP); other steps
      are iterations, as in Detectron2.
    - With ``MAX_EPOCH``, ``SOLVER.CHECKPOINT_PER_EPOCH`` / ``TEST.EVAL_PER_EPOCH`` > 0 set
      ``CHECKPOINT_PERIOD`` / ``EVAL_PERIOD`` to that many epochs' iterations.

    Args:
        cfg: the training config (left unchanged).
        num_images: training images (records) the loader draws from, or a function that
            returns it (called only when ``MAX_EPOCH`` > 0).

    Returns:
        ``cfg`` itself when nothing needs resolving, else a resolved clone (frozen if ``cfg`` was).

    Raises:
        ValueError: if ``MAX_EPOCH`` epochs of ``num_images`` images are not one batch, a
            resolved step lies beyond ``MAX_ITER``, fractional steps round to iteration 0 or to
            the same iteration, or a per-epoch period is set without ``MAX_EPOCH``.
    """
    solver = cfg.SOLVER
    epochs = solver.get("MAX_EPOCH", 0)
    periods = {  # config key: (epochs, the period in iterations it sets)
        "SOLVER.CHECKPOINT_PER_EPOCH": (solver.get("CHECKPOINT_PER_EPOCH", 0),
                                        "SOLVER.CHECKPOINT_PERIOD"),
        "TEST.EVAL_PER_EPOCH": (cfg.TEST.get("EVAL_PER_EPOCH", 0), "TEST.EVAL_PERIOD"),
    }
    periods = {k: v for k, v in periods.items() if v[0] > 0}
    if epochs <= 0:
        if periods:
            raise ValueError(
                f"{' and '.join(periods)} need SOLVER.MAX_EPOCH > 0 (an epoch-length run); with "
                "SOLVER.MAX_ITER use SOLVER.CHECKPOINT_PERIOD and TEST.EVAL_PERIOD in iterations."
            )
        if not any(_is_fraction(s) for s in solver.STEPS):
            return cfg
    max_iter = solver.MAX_ITER
    if epochs > 0:
        num_images = num_images() if callable(num_images) else num_images
        max_iter = _epoch_iterations(epochs, num_images, solver.IMS_PER_BATCH)
    steps = tuple(int(round(s * max_iter)) if _is_fraction(s) else int(s) for s in solver.STEPS)
    late = [s for s in steps if s > max_iter]
    if late and epochs > 0:  # Detectron2 drops such steps with a warning; an epoch run ends first
        raise ValueError(
            f"SOLVER.STEPS {tuple(solver.STEPS)} has iterations {late} beyond the {max_iter} "
            f"iterations of SOLVER.MAX_EPOCH {epochs} ({num_images} images, batch "
            f"{solver.IMS_PER_BATCH}): give the steps as fractions of the run, e.g. (0.67, 0.89)."
        )
    applied = [s for s in steps if s < max_iter]  # a step at MAX_ITER never applies
    if any(_is_fraction(s) for s in solver.STEPS) and (
        any(s < 1 for s in applied) or len(set(applied)) != len(applied)
    ):  # Detectron2's MultiStepParamScheduler takes increasing steps > 0 only
        raise ValueError(
            f"SOLVER.STEPS {tuple(solver.STEPS)} round to iterations {steps} of the {max_iter} "
            "iterations of the run: an LR step at iteration 0 or two steps at one iteration. Give "
            "fractions further apart, fewer steps, or a longer run."
        )
    frozen = cfg.is_frozen()
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = max_iter, steps
    for value, period in periods.values():
        # official trainer.py: len(data_loader) * CHECKPOINT_PER_EPOCH // MAX_EPOCH
        node, key = period.split(".")
        cfg[node][key] = max(int(max_iter * value // epochs), 1)
    if frozen:
        cfg.freeze()
    length = f" ({epochs} epochs of {num_images} images at batch {solver.IMS_PER_BATCH})"
    logger.info(
        f"Schedule: {max_iter} iterations{length if epochs > 0 else ''}, LR steps at {steps}, "
        f"checkpoint period {cfg.SOLVER.CHECKPOINT_PERIOD}, evaluation period "
        f"{cfg.TEST.EVAL_PERIOD} (0 = at the end only)."
    )
    return cfg


def check_checkpoint_period(cfg) -> None:
    """``SOLVER.CHECKPOINT_PERIOD`` must be a positive number of iterations, unless
    ``SOLVER.CHECKPOINT_PER_EPOCH`` sets it (with ``SOLVER.MAX_EPOCH``).

    Detectron2's PeriodicCheckpointer divides by it: 0 stopped the run with a bare
    ``ZeroDivisionError`` after its first iteration (the model built and the data loaded), and a
    negative period saved every ``-period`` iterations.

    Raises:
        ValueError: naming the value and what to set instead.
    """
    period = cfg.SOLVER.CHECKPOINT_PERIOD
    by_epoch = cfg.SOLVER.get("MAX_EPOCH", 0) > 0 and cfg.SOLVER.get("CHECKPOINT_PER_EPOCH", 0) > 0
    if period > 0 or by_epoch:
        return
    raise ValueError(
        f"SOLVER.CHECKPOINT_PERIOD {period} must be a positive number of iterations. "
        "model_final.pth is written at the end whatever the period: for no intermediate "
        f"checkpoints set it to SOLVER.MAX_ITER ({cfg.SOLVER.MAX_ITER})."
    )


def _epoch_iterations(epochs, num_images: int, batch: int) -> int:
    """Official GLIP's ``MAX_EPOCH * len(dataset) // IMS_PER_BATCH``."""
    max_iter = int(epochs * num_images // batch)
    if max_iter < 1:
        raise ValueError(
            f"SOLVER.MAX_EPOCH {epochs} of {num_images} training images is less than one batch "
            f"of SOLVER.IMS_PER_BATCH {batch}: raise MAX_EPOCH or set SOLVER.MAX_ITER instead "
            "(MAX_EPOCH 0)."
        )
    return max_iter


def keep_fractional_steps(steps: Sequence, scaled_cfg):
    """Undo Detectron2's ``auto_scale_workers`` on fractional steps: it divides every step by the
    batch scale and rounds, which turns 0.67 into 0 or 1. A fraction of the run does not
    change with the batch size, so it is put back (on ``scaled_cfg``, in place)."""
    if not any(_is_fraction(s) for s in steps) or tuple(scaled_cfg.SOLVER.STEPS) == tuple(steps):
        return scaled_cfg
    frozen = scaled_cfg.is_frozen()
    scaled_cfg.defrost()
    scaled_cfg.SOLVER.STEPS = tuple(
        s if _is_fraction(s) else new for s, new in zip(steps, scaled_cfg.SOLVER.STEPS)
    )
    if frozen:
        scaled_cfg.freeze()
    return scaled_cfg


def build_glip_lr_scheduler(cfg, optimizer):
    """Detectron2's ``build_lr_scheduler``, without ``SOLVER.STEPS`` equal to ``MAX_ITER``.

    Such a step changes no LR (the last step, iteration ``MAX_ITER - 1``, runs before it), and
    official GLIP's scheduler accepts it; Detectron2's ``MultiStepParamScheduler`` refuses it, so
    a short epoch run whose 0.89 rounds to its last iteration stopped at the start. The step
    stays in ``cfg.SOLVER.STEPS`` for ``SOLVER.WEIGHT_DECAY_SCHEDULE`` (official: milestones).
    """
    if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupMultiStepLR" and cfg.SOLVER.MAX_ITER in cfg.SOLVER.STEPS:
        frozen = cfg.is_frozen()
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SOLVER.STEPS = tuple(s for s in cfg.SOLVER.STEPS if s != cfg.SOLVER.MAX_ITER)
        if frozen:
            cfg.freeze()
    scheduler = build_lr_scheduler(cfg, optimizer)
    _exact_steps(scheduler, cfg.SOLVER.MAX_ITER)
    return scheduler


def _exact_steps(scheduler, max_iter: int):
    """Make the LR steps and the end of the warmup fall on their iterations exactly, however
    long the run.

    fvcore's ``MultiStepParamScheduler`` finds the step of iteration ``it`` as
    ``int((it / MAX_ITER + 1e-6) * MAX_ITER)``: from a million iterations on the 1e-6 is a whole
    iteration, so GLIP-L's LR dropped at iteration 669,999 instead of 670,000 (official: 670,000).
    The warmup (Detectron2's ``WarmupParamScheduler``, an fvcore ``CompositeParamScheduler``)
    ends by the same test: beyond a million iterations its last iterations ran at the full LR
    (a 2M-iteration run with 2000 constant warmup iterations: iteration 1999 at 1000x the LR).
    Here the epsilon is at most half an iteration (fvcore's 1e-6 stays for runs below 500k
    iterations): it absorbs the float error of ``it / MAX_ITER`` and never reaches the next
    iteration.
    """
    epsilon = min(ParamScheduler.WHERE_EPSILON, 0.5 / max(1, max_iter))
    multiplier = getattr(scheduler, "_multiplier", None)
    for inner in [multiplier, *getattr(multiplier, "_schedulers", [])]:
        if isinstance(inner, (MultiStepParamScheduler, CompositeParamScheduler)):
            inner.WHERE_EPSILON = epsilon
