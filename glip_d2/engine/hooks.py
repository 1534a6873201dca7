"""Training hooks: the LR logged for the main parameter group."""
import math
from typing import Dict, List

from detectron2.engine import hooks
from detectron2.engine.train_loop import HookBase

__all__ = ["MainGroupLRScheduler", "log_main_group_lr", "match_lr_hook_state"]


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


_LR_HOOK_NAMES = ("LRScheduler", "MainGroupLRScheduler")


def match_lr_hook_state(state_dict: Dict, trainer_hooks: List[HookBase]) -> Dict:
    """A trainer ``state_dict`` whose LR-scheduler hook state is under the name of the trainer's
    own LR hook.

    Detectron2 saves and restores each hook's state under its class name: checkpoints of
    Detectron2's trainer (and of glip_d2 before :class:`MainGroupLRScheduler`) hold the
    scheduler under "LRScheduler", which a trainer with :class:`MainGroupLRScheduler` ignored
    (with a warning), restarting the LR schedule at the resumed iteration; and the other way round.
    """
    saved = state_dict.get("hooks", {})
    own = [type(h).__qualname__ for h in trainer_hooks if type(h).__qualname__ in _LR_HOOK_NAMES]
    if not own or own[0] in saved:
        return state_dict
    other = next((n for n in _LR_HOOK_NAMES if n != own[0] and n in saved), None)
    if other is None:
        return state_dict
    hooks_state = {(own[0] if k == other else k): v for k, v in saved.items()}
    return dict(state_dict, hooks=hooks_state)
