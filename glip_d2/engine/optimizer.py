"""Optimizers from the config: GLIP's AdamW rules, or Detectron2's SGD rules for stock configs.

``SOLVER.OPTIMIZER "ADAMW"`` (every GLIP config): the language backbone at ``LANG_LR_FACTOR`` of
the base LR, no weight decay on norms, biases and position tables. ``"SGD"`` (the default, so a
stock Detectron2 config keeps its meaning): exactly Detectron2's ``build_optimizer`` (momentum,
nesterov, ``WEIGHT_DECAY_NORM``, ``WEIGHT_DECAY_BIAS``, ``BIAS_LR_FACTOR``), plus
``LANG_LR_FACTOR`` on a language backbone if the model has one.
"""
import logging
from typing import Dict, List

import torch
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from torch import nn

NO_DECAY_KEYWORDS = ("relative_position_bias_table", "_embeddings.", "absolute_pos_embed", "gamma_v",
                     "gamma_l", "bias0", "log_scale", "bias_lang", "prompt_tuning.")

LANGUAGE_PREFIX = "language_backbone."

logger = logging.getLogger(__name__)


def param_groups(model: nn.Module, base_lr: float, weight_decay: float, lang_lr_factor: float) -> List[Dict]:
    """One group per trainable parameter with its lr and weight decay (GLIP's AdamW rules).

    Norm weights, biases (every 1-d tensor) and position/embedding tables get no weight decay;
    parameters under `language_backbone.` train at `base_lr * lang_lr_factor`.
    """
    groups, seen = [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        no_decay = p.ndim <= 1 or any(k in name for k in NO_DECAY_KEYWORDS)
        lr = base_lr * (lang_lr_factor if name.startswith(LANGUAGE_PREFIX) else 1.0)
        groups.append({"params": [p], "lr": lr, "weight_decay": 0.0 if no_decay else weight_decay,
                       "name": name})
    return groups


def _sgd_param_groups(cfg, model: nn.Module) -> List[Dict]:
    """Detectron2's default parameter groups, the language backbone scaled by LANG_LR_FACTOR."""
    factor = cfg.SOLVER.LANG_LR_FACTOR

    def lang_factor(name: str) -> float:
        # get_default_optimizer_params passes "<module>.<param>"; the root module's name is "".
        return factor if name.lstrip(".").startswith(LANGUAGE_PREFIX) else 1.0

    return get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        lr_factor_func=lang_factor if factor != 1.0 else None,
    )


def build_glip_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer ``SOLVER.OPTIMIZER`` names, with the config's gradient clipping.

    ``CLIP_GRADIENTS.CLIP_TYPE "full_model"`` clips the norm of all gradients together (official
    GLIP); other clip types are Detectron2's per-parameter clipping.

    Raises:
        ValueError: for an optimizer name other than "SGD" or "ADAMW".
    """
    name = cfg.SOLVER.OPTIMIZER.upper()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise ValueError(
            "No parameter is trainable (MODEL.GLIP.TUNING and the FREEZE options froze them all)."
        )
    logger.info(
        f"Optimizer {name}: {trainable:,} trainable parameters of "
        f"{sum(p.numel() for p in model.parameters()):,} (MODEL.GLIP.TUNING "
        f"{cfg.MODEL.get('GLIP', {}).get('TUNING', 'full')!r})."
    )
    if name == "ADAMW":
        groups = param_groups(model, cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.LANG_LR_FACTOR)
        for g in groups:
            g.pop("name")
        cls, kw = torch.optim.AdamW, {}
    elif name == "SGD":
        groups = _sgd_param_groups(cfg, model)
        cls = torch.optim.SGD
        kw = {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV,
              "weight_decay": cfg.SOLVER.WEIGHT_DECAY, "foreach": True}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {cfg.SOLVER.OPTIMIZER!r}")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        return _with_full_model_clipping(cls, clip.CLIP_VALUE, clip.NORM_TYPE)(groups, lr=cfg.SOLVER.BASE_LR, **kw)
    return maybe_add_gradient_clipping(cfg, cls)(groups, lr=cfg.SOLVER.BASE_LR, **kw)


def _with_full_model_clipping(optim_cls, max_norm: float, norm_type: float):
    """Optimizer class that clips the gradient norm of ALL parameters together before a step
    (official GLIP "full_model"; Detectron2's own clipping is per parameter)."""

    class FullModelClipping(optim_cls):
        def step(self, closure=None):
            params = [p for g in self.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure)

    FullModelClipping.__name__ = optim_cls.__name__ + "WithFullModelGradientClipping"
    return FullModelClipping
