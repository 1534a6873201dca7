"""Initialisation of the Swin backbone from an ImageNet Swin release, where official GLIP
pretraining starts (`MODEL.WEIGHT swin_tiny_patch4_window7_224.pth` for GLIP-T,
`swin_large_patch4_window12_384_22k.pth` for GLIP-L).

Those files (microsoft/Swin-Transformer) hold `{"model": {...}}` with the bare Swin names
(`patch_embed.*`, `layers.{i}.blocks.{j}.*`, `layers.{i}.downsample.*`), a final `norm.*` and
the `head.*` classifier. Official GLIP loads them by suffix matching, which puts every Swin
tensor on its block and matches neither `norm.*` (the detection Swin normalises each returned
stage with its own `norm{i}` instead) nor `head.*`. Here the mapping is explicit: the Swin names
get the prefix of the model's Swin backbone, `head.*`, `norm.*` and the buffers the model
rebuilds are dropped (logged), and a file of another Swin variant or window size is refused.
"""

import logging
import math
import re
from typing import Dict, List, Tuple

import torch
from torch import nn

from ..modeling.backbone.swin import SwinTransformer

logger = logging.getLogger(__name__)

__all__ = ["imagenet_swin_checkpoint", "is_imagenet_swin_state_dict"]

# ImageNet tensors with no place in glip_d2's Swin, with the reason (logged when dropped).
DROPPED_KEYS: List[Tuple[str, str]] = [
    (r"^head\.", "the ImageNet classifier"),
    (
        r"^norm\.(weight|bias)$",
        "the classifier's final LayerNorm; as in official GLIP, each returned stage has its own "
        "norm{i}, which starts from its initialisation",
    ),
    (r"\.(relative_position_index|attn_mask)$", "a buffer the model rebuilds"),
]
_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.")
_BIAS_TABLE = re.compile(r"^layers\.(\d+)\.blocks\.0\.attn\.relative_position_bias_table$")


def is_imagenet_swin_state_dict(sd: Dict) -> bool:
    """True for a state dict in the layout of the ImageNet Swin releases: bare Swin names
    (`patch_embed.proj.weight`, `layers.0.blocks.0.*`), no `backbone.` prefix."""
    return (
        "patch_embed.proj.weight" in sd
        and any(str(k).startswith("layers.0.blocks.0.") for k in sd)
        and not any(str(k).startswith(("backbone.", "module.")) for k in sd)
    )


def describe_swin(sd: Dict[str, torch.Tensor]) -> str:
    """The Swin variant of a state dict in bare Swin names, in config terms (shapes only), e.g.
    "embed dim 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24), window 7"."""
    embed = sd.get("patch_embed.proj.weight")
    blocks: Dict[int, int] = {}
    for key in sd:
        m = _BLOCK.match(key)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            blocks[stage] = max(blocks.get(stage, -1), block)
    tables = {int(m.group(1)): sd[k] for k in sd for m in [_BIAS_TABLE.match(k)] if m}
    heads = tuple(int(tables[s].shape[1]) for s in sorted(tables))
    windows = sorted({_window_size(t) for t in tables.values()})
    return (
        f"embed dim {int(embed.shape[0]) if embed is not None else None}, "
        f"depths {tuple(blocks[s] + 1 for s in sorted(blocks))}, heads {heads}, "
        f"window {', '.join(map(str, windows)) or None}"
    )


def _window_size(table: torch.Tensor) -> int:
    # A relative position bias table has (2 * window - 1) ** 2 rows.
    return (math.isqrt(int(table.shape[0])) + 1) // 2


def _find_swin(model: nn.Module) -> Tuple[str, SwinTransformer]:
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, SwinTransformer)]
    if len(found) != 1:
        raise ValueError(
            f"The checkpoint is an ImageNet Swin release (bare `patch_embed.*` / `layers.*` "
            f"names), but the model has {len(found)} Swin backbones "
            f"({', '.join(n for n, _ in found) or 'none'}); it initialises a model with one "
            "Swin backbone (MODEL.BACKBONE.NAME build_swin_fpn_retinanet_backbone)."
        )
    name, swin = found[0]
    return (name + "." if name else ""), swin


def _examples(keys, limit: int = 4) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _check_fits(kept: Dict[str, torch.Tensor], swin: SwinTransformer, source: str) -> None:
    """Refuse a file whose Swin tensors do not fit the model's Swin one to one.

    Raises:
        ValueError: naming both variants, the differing tensors and, for another window size,
            the MODEL.SWIN.WINDOW_SIZE the file was trained with.
    """
    own = swin.state_dict()
    # Every parameter but the per-output norms norm{i}, which the release does not have.
    wanted = {k for k, _ in swin.named_parameters() if not re.match(r"^norm\d+\.", k)}
    shape = sorted(k for k in kept if k in own and tuple(kept[k].shape) != tuple(own[k].shape))
    only_file = sorted(set(kept) - set(own))
    only_model = sorted(wanted - set(kept))
    if not (shape or only_file or only_model):
        return
    file_variant, own_variant = describe_swin(kept), describe_swin(own)
    tables = [  # the same heads, another number of rows: another window size
        k
        for k in shape
        if k.endswith("relative_position_bias_table") and kept[k].shape[1:] == own[k].shape[1:]
    ]
    if tables and not only_file and not only_model and len(tables) == len(shape):
        file_window = _window_size(kept[tables[0]])
        own_window = _window_size(own[tables[0]])
        raise ValueError(
            f"{source} is an ImageNet Swin trained with MODEL.SWIN.WINDOW_SIZE {file_window}, "
            f"but the config builds WINDOW_SIZE {own_window} (relative_position_bias_table "
            f"{tuple(kept[tables[0]].shape)} vs {tuple(own[tables[0]].shape)} in {len(tables)} "
            f"blocks, e.g. {tables[0]}). glip_d2 does not resize the bias tables; set "
            f"MODEL.SWIN.WINDOW_SIZE {file_window}, or use the release trained with window "
            f"{own_window}."
        )
    problems = []
    if shape:
        problems.append(
            f"{len(shape)} tensors with another shape: "
            + ", ".join(
                f"{k} (file {tuple(kept[k].shape)} vs model {tuple(own[k].shape)})"
                for k in shape[:4]
            )
            + (", ..." if len(shape) > 4 else "")
        )
    if only_file:
        problems.append(f"{len(only_file)} file tensors the model lacks ({_examples(only_file)})")
    if only_model:
        problems.append(f"{len(only_model)} model tensors the file lacks ({_examples(only_model)})")
    raise ValueError(
        f"{source} is an ImageNet Swin of another variant ({file_variant}) than the config's "
        f"Swin ({own_variant}). Set MODEL.SWIN.EMBED_DIM / DEPTHS / NUM_HEADS / WINDOW_SIZE "
        "to the file's (Swin-T: 96, [2, 2, 6, 2], [3, 6, 12, 24], 7 with "
        "swin_tiny_patch4_window7_224.pth; Swin-L: 192, [2, 2, 18, 2], [6, 12, 24, 48], 12 "
        "with swin_large_patch4_window12_384_22k.pth), or use the release of the config's "
        "variant. Details: " + "; ".join(problems)
    )


def imagenet_swin_checkpoint(model: nn.Module, sd: Dict[str, torch.Tensor], source: str) -> Dict:
    """An ImageNet Swin release mapped onto the model's Swin backbone.

    Args:
        model: the model to initialise (not wrapped in DDP); it must have one SwinTransformer.
        sd: the release's state dict (:func:`is_imagenet_swin_state_dict`).
        source: the file, for messages.

    Returns:
        a checkpoint dict for Detectron2's checkpointer: {"model": Swin tensors under the
        backbone's prefix (e.g. "backbone.bottom_up."), "__author__": "imagenet_swin",
        "matching_heuristics": False}. Everything else in the model keeps its initialisation.

    Raises:
        ValueError: for a model without exactly one Swin backbone, or a file of another Swin
            variant or window size (see :func:`_check_fits`).
    """
    prefix, swin = _find_swin(model)
    kept, dropped = {}, {}
    for key, value in sd.items():
        reason = next((r for p, r in DROPPED_KEYS if re.search(p, key)), None)
        if reason is None:
            kept[key] = value
        else:
            dropped.setdefault(reason, []).append(key)
    _check_fits(kept, swin, source)
    logger.info(
        f"ImageNet Swin checkpoint {source} ({describe_swin(kept)}): {len(kept)} tensors loaded "
        f"into {prefix}*; dropped: "
        + "; ".join(f"{_examples(keys, 2)} ({reason})" for reason, keys in dropped.items())
        + ". The rest of the model (FPN, fusion tower, heads, text encoder) keeps its "
        "initialisation."
    )
    return {
        "model": {prefix + k: v for k, v in kept.items()},
        "__author__": "imagenet_swin",
        "matching_heuristics": False,
    }
