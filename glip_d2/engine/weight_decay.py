"""Official GLIP's weight-decay schedule (``SOLVER.WEIGHT_DECAY_SCHEDULE``, set by GLIP-L)."""
import logging
import math
from typing import Sequence

from detectron2.engine.train_loop import HookBase

__all__ = ["WeightDecaySchedule"]

logger = logging.getLogger(__name__)


class WeightDecaySchedule(HookBase):
    """Multiply every parameter group's weight decay by ``gamma`` once training reaches
    ``ratio`` times each LR step (official: at 0.667 of each step, by the LR's gamma).

    The hook keeps no state: the decayed values live in the optimizer's parameter groups, which
    checkpoints save and a resume restores, and each drop happens after exactly one iteration.
    """

    def __init__(self, optimizer, steps: Sequence[int], gamma: float, ratio: float):
        self.optimizer = optimizer
        self.gamma = gamma
        # the number of finished iterations after which each drop happens: the official code
        # tests scheduler.last_epoch >= (next step) * ratio right after the step, so one drop per
        # step and at most one per iteration (two steps whose thresholds round together drop at
        # two successive iterations, not once)
        self.drop_at = []
        for s in sorted(steps):
            earliest = self.drop_at[-1] + 1 if self.drop_at else 1
            self.drop_at.append(max(math.ceil(s * ratio), earliest))

    def after_step(self):
        if self.trainer.iter + 1 in self.drop_at:
            for group in self.optimizer.param_groups:
                group["weight_decay"] *= self.gamma
            logger.info(f"Iteration {self.trainer.iter + 1}: weight decay multiplied by {self.gamma} "
                        "(SOLVER.WEIGHT_DECAY_SCHEDULE).")
