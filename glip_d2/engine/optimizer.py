"""Optimizers from the config: GLIP's AdamW rules, or Detectron2's SGD rules for stock configs.

``SOLVER.OPTIMIZER "ADAMW"`` (every GLIP config), with the parameter groups
``SOLVER.PARAM_GROUPS`` names:

* ``"official"`` (GLIP-T and GLIP-L, ``Base-GLIP.yaml``): the official ``make_optimizer``. A
  parameter whose name contains "bias" (biases, ``relative_position_bias_table``, ``bias0``,
  ``bias_lang``) trains at ``BIAS_LR_FACTOR`` times its LR with weight decay
  ``WEIGHT_DECAY_BIAS``; every other parameter, norms and embeddings included, has
  ``WEIGHT_DECAY``.
* ``"no_decay_1d"`` (the default, and the shapes demos, whose numbers were measured with it): no
  weight decay on 1-d tensors (norms, biases) and position / embedding tables, no bias LR factor.

In both, parameters under ``language_backbone.`` train at ``LANG_LR_FACTOR`` of the LR (official
LANG_LR 1e-5 against BASE_LR 1e-4). ``"SGD"`` (the default, so a stock Detectron2 config keeps its
meaning): exactly Detectron2's ``build_optimizer`` (momentum, nesterov, ``WEIGHT_DECAY_NORM``,
``WEIGHT_DECAY_BIAS``, ``BIAS_LR_FACTOR``), plus ``LANG_LR_FACTOR`` on a language backbone if the
model has one.
"""
import logging
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from torch import nn

NO_DECAY_KEYWORDS = ("relative_position_bias_table", "_embeddings.", "absolute_pos_embed", "gamma_v",
                     "gamma_l", "bias0", "log_scale", "bias_lang", "prompt_tuning.")

LANGUAGE_PREFIX = "language_backbone."

PARAM_GROUP_RULES = ("official", "no_decay_1d")

logger = logging.getLogger(__name__)


def official_lr_and_decay(name: str, base_lr: float, weight_decay: float, lang_lr_factor: float,
                          bias_lr_factor: float, weight_decay_bias: Optional[float]) -> Tuple[float, float]:
    """LR and weight decay of one parameter under the official GLIP ``make_optimizer`` rule.

    The rule reads only the name; glip_d2's names keep "bias" wherever the official ones have it
    (tested on every GLIP-T key through the checkpoint converter).
    """
    lr = base_lr * (lang_lr_factor if name.startswith(LANGUAGE_PREFIX) else 1.0)
    if "bias" in name:
        bias_decay = weight_decay if weight_decay_bias is None else weight_decay_bias
        return lr * bias_lr_factor, bias_decay
    return lr, weight_decay


def param_groups(model: nn.Module, base_lr: float, weight_decay: float, lang_lr_factor: float,
                 rule: str = "no_decay_1d", bias_lr_factor: float = 1.0,
                 weight_decay_bias: Optional[float] = None) -> List[Dict]:
    """One group per trainable parameter with its lr and weight decay (``SOLVER.PARAM_GROUPS``).

    Args:
        rule: "official" (GLIP's ``make_optimizer``: names with "bias" at ``bias_lr_factor`` times
            the LR and ``weight_decay_bias``) or "no_decay_1d" (1-d tensors and position /
            embedding tables without weight decay; ``bias_lr_factor`` unused).
        bias_lr_factor, weight_decay_bias: the "official" rule's SOLVER.BIAS_LR_FACTOR and
            SOLVER.WEIGHT_DECAY_BIAS (None = WEIGHT_DECAY, as in Detectron2).
    Raises:
        ValueError: for another rule name.
    """
    if rule not in PARAM_GROUP_RULES:
        raise ValueError(f"SOLVER.PARAM_GROUPS must be one of {PARAM_GROUP_RULES}, got {rule!r}")
    groups, seen = [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if rule == "official":
            lr, decay = official_lr_and_decay(name, base_lr, weight_decay, lang_lr_factor, bias_lr_factor,
                                              weight_decay_bias)
        else:
            no_decay = p.ndim <= 1 or any(k in name for k in NO_DECAY_KEYWORDS)
            lr = base_lr * (lang_lr_factor if name.startswith(LANGUAGE_PREFIX) else 1.0)
            decay = 0.0 if no_decay else weight_decay
        groups.append({"params": [p], "lr": lr, "weight_decay": decay, "name": name})
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
        ValueError: for an optimizer name other than "SGD" or "ADAMW", or a SOLVER.PARAM_GROUPS
            rule other than PARAM_GROUP_RULES (also under SGD, which does not use it).
    """
    name = cfg.SOLVER.OPTIMIZER.upper()
    if cfg.SOLVER.PARAM_GROUPS not in PARAM_GROUP_RULES:  # also under SGD, where it is not used
        raise ValueError(
            f"SOLVER.PARAM_GROUPS must be one of {PARAM_GROUP_RULES}, got {cfg.SOLVER.PARAM_GROUPS!r}"
        )
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
        groups = param_groups(model, cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.LANG_LR_FACTOR,
                              rule=cfg.SOLVER.PARAM_GROUPS, bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
                              weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS)
        for g in groups:
            g.pop("name")
        cls, kw = torch.optim.AdamW, {}
    elif name == "SGD":
        logger.info(
            "SGD: Detectron2's parameter groups (WEIGHT_DECAY_NORM, BIAS_LR_FACTOR, "
            "WEIGHT_DECAY_BIAS; the text encoder at LANG_LR_FACTOR); SOLVER.PARAM_GROUPS "
            f"{cfg.SOLVER.PARAM_GROUPS!r} is ADAMW's."
        )
        groups = _sgd_param_groups(cfg, model)
        cls = torch.optim.SGD
        kw = {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV,
              "weight_decay": cfg.SOLVER.WEIGHT_DECAY, "foreach": True}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {cfg.SOLVER.OPTIMIZER!r}")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        if clip.CLIP_VALUE <= 0:  # the official code turns clipping off; clipping at 0 zeroes every step
            logger.info("SOLVER.CLIP_GRADIENTS.CLIP_VALUE <= 0: no gradient clipping (as the official code).")
            return cls(groups, lr=cfg.SOLVER.BASE_LR, **kw)
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
