"""Training hooks: the LR logged for the main parameter group."""
import math
from typing import List

from detectron2.engine import hooks
from detectron2.engine.train_loop import HookBase

__all__ = ["MainGroupLRScheduler", "log_main_group_lr"]


class MainGroupLRScheduler(hooks.LRScheduler):
    """Detectron2's LRScheduler hook, logging the LR of a parameter group at ``base_lr``.

    Detectron2 logs the largest group's LR (or, with one parameter per group, the most common
    one), which in a language-aware model can be the text encoder's ``LANG_LR_FACTOR`` group.
    This hook logs the largest group whose initial LR equals ``base_lr`` (falling back to
    Detectron2's choice when none does).
    """

    def __init__(self, base_lr: float, optimizer=None, scheduler=None):
        super().__init__(optimizer, scheduler)
        self.base_lr = float(base_lr)

    def before_train(self):
        super().before_train()
        self._best_param_group_id = main_param_group_id(self._optimizer, self.base_lr,
                                                        self._best_param_group_id)


def main_param_group_id(optimizer, base_lr: float, default: int) -> int:
    """Index of the largest param group whose initial LR is ``base_lr``, else ``default``."""
    best, size = default, -1
    for i, g in enumerate(optimizer.param_groups):
        lr = g.get("initial_lr", g["lr"])
        if math.isclose(lr, base_lr, rel_tol=1e-9) and len(g["params"]) > size:
            best, size = i, len(g["params"])
    return best


def log_main_group_lr(trainer_hooks: List[HookBase], base_lr: float) -> List[HookBase]:
    """Replace Detectron2's LRScheduler hook (as ``DefaultTrainer.build_hooks`` makes it) by
    :class:`MainGroupLRScheduler`; other hooks are kept in place."""
    out = []
    for h in trainer_hooks:
        if type(h) is hooks.LRScheduler:
            h = MainGroupLRScheduler(base_lr, h._optimizer, h._scheduler)
        out.append(h)
    return out
