"""Exponential moving average of model weights (official GLIP: MODEL_EMA 0.999).

The EMA holds the weights of the model itself, never of its DDP wrapper: its keys are the model's
own (no ``module.`` prefix), so EMA weights saved by a multi-process run load into a one-process
model (``--eval-only``, a resume on another number of processes) and the other way round.
"""
import contextlib
import copy
import logging

import torch
from detectron2.engine import HookBase
from torch import nn

from ..checkpoint.checkpointer import unwrap_model

logger = logging.getLogger(__name__)

_WRAPPER = "module."  # the key prefix of DistributedDataParallel / DataParallel state dicts


def _own_keys(state: dict) -> dict:
    """EMA weights saved with a wrapper's prefix (by earlier glip_d2 versions, in multi-process
    runs) under the model's own keys."""
    if state and all(k.startswith(_WRAPPER) for k in state):
        return {k[len(_WRAPPER):]: v for k, v in state.items()}
    return state


class ModelEMA(nn.Module):
    """Shadow copy of a model's state: parameters averaged as ema = d*ema + (1-d)*w, buffers copied.

    Buffers are copied, not averaged: they are statistics or caches that a forward pass fills
    (the prompt-tuning features start as zeros and are written by the first training step), and
    an average started from their initial value would shrink them by (1 - d^n).

    The average starts from the model as it is when the EMA is built; ``start_from`` restarts
    every entry a checkpoint did not restore from the model's weights as they are after loading
    (the trainer calls it after ``MODEL.WEIGHTS`` or a resumed checkpoint is loaded, as the
    official code builds its EMA after loading). ``model`` may be wrapped in DDP; the EMA follows
    the wrapped model.
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.decay = decay
        model = unwrap_model(model)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._averaged = {k for k, _ in model.named_parameters(remove_duplicate=False)}
        self._restored = set()  # entries load_state_dict took from a checkpoint

    @torch.no_grad()
    def update(self, model: nn.Module):
        for k, v in unwrap_model(model).state_dict().items():
            s = self.shadow[k]
            if k in self._averaged and v.dtype.is_floating_point:
                s.mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                s.copy_(v)

    @torch.no_grad()
    def start_from(self, model: nn.Module) -> int:
        """Copy the model's current state into every entry no checkpoint restored.

        Returns:
            how many entries were (re)started.
        """
        state = unwrap_model(model).state_dict()
        fresh = [k for k in self.shadow if k not in self._restored]
        for k in fresh:
            self.shadow[k].copy_(state[k])
        if self._restored and fresh:
            logger.warning(f"The EMA checkpoint lacked {len(fresh)} of the model's {len(self.shadow)} "
                           f"entries (e.g. {fresh[0]}); their average restarts from the loaded weights.")
        elif fresh:
            logger.info("The weight EMA starts from the loaded weights (no EMA was restored: a new "
                        "run, MODEL.WEIGHTS without --resume, or a checkpoint without one).")
        return len(fresh)

    def state_dict(self, *args, **kwargs):
        return {k: v.clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state, strict=True):
        """Restore the entries ``state`` has with the model's shape; an entry of another shape
        (the checkpointer skips such a model tensor when fine-tuning) is logged and left to
        :meth:`start_from`, as an entry the checkpoint lacks."""
        state = _own_keys(state)
        wrong_shape = []
        for k, v in state.items():
            if k not in self.shadow:
                continue
            own = tuple(self.shadow[k].shape)
            if tuple(v.shape) != own:
                wrong_shape.append(f"{k} (checkpoint {tuple(v.shape)} vs model {own})")
                continue
            self.shadow[k].copy_(v)
            self._restored.add(k)
        if wrong_shape:
            logger.warning(
                "EMA entries of the checkpoint with another shape than the model's are not "
                f"restored: {', '.join(wrong_shape)}."
            )

    def swap_into(self, model: nn.Module):
        """Put EMA weights into `model` (or the model a DDP `model` wraps); returns the previous
        weights, for ``unwrap_model(model).load_state_dict``."""
        model = unwrap_model(model)
        backup = copy.deepcopy(model.state_dict())
        model.load_state_dict(self.shadow)
        return backup


class EMAHook(HookBase):
    """Updates the EMA after every step; the EMA is saved with checkpoints as 'ema'."""

    def __init__(self, ema: ModelEMA, model: nn.Module):
        self.ema, self.model = ema, model

    def after_step(self):
        self.ema.update(self.model)


@contextlib.contextmanager
def ema_weights(ema: ModelEMA, model: nn.Module):
    """Run the body with the EMA weights in `model`; the training weights are restored after."""
    backup = ema.swap_into(model)
    try:
        yield model
    finally:
        unwrap_model(model).load_state_dict(backup)


def load_ema_for_eval(model: nn.Module, checkpoint: dict) -> bool:
    """Load the "ema" entry of a glip_d2 training checkpoint into `model` (TEST.USE_EMA).

    Args:
        checkpoint: what the checkpointer's load returned (the entries it did not consume).
    Returns:
        True if EMA weights were loaded, False when the checkpoint has none (the raw weights
        stay, with a log line saying so).
    """
    state = checkpoint.get("ema") if checkpoint else None
    if not state:
        logging.getLogger(__name__).info("TEST.USE_EMA: the checkpoint has no EMA weights; evaluating the raw weights.")
        return False
    unwrap_model(model).load_state_dict(_own_keys(state))
    return True


def load_eval_weights(model: nn.Module, checkpoint: dict, use_ema: bool) -> str:
    """Put into `model`, which holds the checkpoint's raw weights, what ``train_net.py
    --eval-only`` evaluates: the checkpoint's "ema" entry when `use_ema` (TEST.USE_EMA) and it
    has one. The predictor and the pseudo-label teacher use the same rule.

    Returns:
        "ema" or "model" (the raw weights stay).
    """
    return "ema" if use_ema and load_ema_for_eval(model, checkpoint) else "model"

