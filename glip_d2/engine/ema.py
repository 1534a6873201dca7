"""Exponential moving average of model weights (official GLIP: MODEL_EMA 0.999)."""
import copy

import torch
from detectron2.engine import HookBase
from torch import nn


class ModelEMA(nn.Module):
    """Shadow copy of a model's floating-point state, updated as ema = d*ema + (1-d)*w."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module):
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                s.copy_(v)

    def state_dict(self, *args, **kwargs):
        return {k: v.clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state, strict=True):
        for k, v in state.items():
            if k in self.shadow:
                self.shadow[k].copy_(v)

    def swap_into(self, model: nn.Module):
        """Put EMA weights into `model`; returns the previous weights for `load_state_dict`."""
        backup = copy.deepcopy(model.state_dict())
        model.load_state_dict(self.shadow)
        return backup


class EMAHook(HookBase):
    """Updates the EMA after every step; the EMA is saved with checkpoints as 'ema'."""

    def __init__(self, ema: ModelEMA, model: nn.Module):
        self.ema, self.model = ema, model

    def after_step(self):
        self.ema.update(self.model)
