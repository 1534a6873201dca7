"""GLIP's optimizer: language backbone at a fraction of the base LR, no decay on norms/biases/tables."""
from typing import Dict, List

import torch
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn

NO_DECAY_KEYWORDS = ("relative_position_bias_table", "_embeddings.", "absolute_pos_embed", "gamma_v",
                     "gamma_l", "bias0", "log_scale", "bias_lang")


def param_groups(model: nn.Module, base_lr: float, weight_decay: float, lang_lr_factor: float) -> List[Dict]:
    """One group per trainable parameter with its lr and weight decay.

    Norm weights, biases (every 1-d tensor) and position/embedding tables get no weight decay;
    parameters under `language_backbone.` train at `base_lr * lang_lr_factor`.
    """
    groups, seen = [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        no_decay = p.ndim <= 1 or any(k in name for k in NO_DECAY_KEYWORDS)
        lr = base_lr * (lang_lr_factor if name.startswith("language_backbone.") else 1.0)
        groups.append({"params": [p], "lr": lr, "weight_decay": 0.0 if no_decay else weight_decay,
                       "name": name})
    return groups


def build_glip_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW (or SGD) over `param_groups`, with Detectron2's gradient clipping from the config."""
    groups = param_groups(model, cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.LANG_LR_FACTOR)
    for g in groups:
        g.pop("name")
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        cls, kw = torch.optim.AdamW, {}
    elif name == "SGD":
        cls, kw = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM}
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
