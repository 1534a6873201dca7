"""Conversion of official GLIP checkpoints (microsoft/GLIP, maskrcnn-benchmark names) to
glip_d2's module names, through an explicit key-mapping table."""

import re
from typing import Dict, List, Tuple

import torch

from ..modeling.backbone.swin_fpn import convert_official_backbone_state_dict

# Keys of the official model that glip_d2 does not have, with the reason.
IGNORED_OFFICIAL_KEYS = [
    (
        r"^rpn\.head\.cls_logits\.",
        "unused by the dot-product head (only sets the width of the score matrix)",
    ),
    (r"^rpn\.anchor_generator\.", "anchors are computed, not stored"),
    (r"^language_backbone\.body\.model\.pooler\.", "GLIP uses no BERT pooler"),
    (
        r"^language_backbone\.body\.model\.embeddings\.position_ids$",
        "a constant buffer (persistent in transformers < 4.31)",
    ),
]

# (official regex, glip_d2 replacement), applied to keys without the 'module.' prefix.
HEAD_KEY_MAP: List[Tuple[str, str]] = [
    (r"^language_backbone\.body\.model\.", "language_backbone.model."),
    (r"^rpn\.head\.log_scale$", "head.scorer.log_scale"),
    (r"^rpn\.head\.bias_lang$", "head.scorer.bias_lang"),
    (r"^rpn\.head\.bias0$", "head.scorer.bias0"),
    (r"^rpn\.head\.dot_product_projection_text\.", "head.scorer.proj_text."),
    (r"^rpn\.head\.bbox_pred\.", "head.bbox_pred."),
    (r"^rpn\.head\.centerness\.", "head.centerness."),
    (r"^rpn\.head\.scales\.(\d+)\.scale$", r"head.scales.\1.scale"),
]

# Inside one official tower module (`rpn.head.dyhead_tower.{m}.`): VLFuse, BERT layer, DyConv.
FUSE_KEY_MAP = [
    (r"^b_attn\.layer_norm_v\.", "norm_v."),
    (r"^b_attn\.layer_norm_l\.", "norm_l."),
    (r"^b_attn\.gamma_v$", "gamma_v"),
    (r"^b_attn\.gamma_l$", "gamma_l"),
    (r"^b_attn\.attn\.", "attn."),
]
TEXT_LAYER_KEY_MAP = [
    (r"^attention\.self\.(query|key|value)\.", r"\1."),
    (r"^attention\.output\.dense\.", "attn_out."),
    (r"^attention\.output\.LayerNorm\.", "attn_norm."),
    (r"^intermediate\.dense\.", "ffn_in."),
    (r"^output\.dense\.", "ffn_out."),
    (r"^output\.LayerNorm\.", "ffn_norm."),
]
DYCONV_KEY_MAP = [
    (r"^DyConv\.(\d)\.conv\.", r"convs.\1.conv."),
    (r"^DyConv\.(\d)\.bn\.", r"convs.\1.norm."),
    (r"^AttnConv\.1\.", "scale_attn."),
    (r"^relu\.fc\.", "dyrelu.fc."),
    (r"^offset\.", "offset."),
]
_TOWER = re.compile(r"^rpn\.head\.dyhead_tower\.(\d+)\.(.*)$")


def _apply(table, key):
    for pat, rep in table:
        new, n = re.subn(pat, rep, key)
        if n:
            return new
    return None


def is_official_glip_state_dict(sd: Dict) -> bool:
    """True for state dicts in the official GLIP layout (with or without 'module.')."""
    return any(k.startswith(("module.backbone.body.", "backbone.body.")) for k in sd) and any(
        "rpn.head." in k for k in sd
    )


def convert_official_state_dict(sd: Dict[str, torch.Tensor]):
    """Official GLIP state dict -> glip_d2 state dict.

    Returns:
        (converted dict, report) where report has "ignored" (official keys intentionally
        dropped, with reasons) and "unmapped" (official keys with no rule: likely another
        variant or a newer official feature).
    """
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}
    fused = any(".b_attn." in k for k in sd)
    out, ignored, unmapped = {}, [], []
    for key, value in sd.items():
        if key.startswith("backbone."):
            # One key at a time, so that a key without a rule is reported, not fatal.
            try:
                ((new, value),) = convert_official_backbone_state_dict({key: value}).items()
            except KeyError:
                unmapped.append(key)
            else:
                out["backbone." + new] = value
            continue
        reason = next((r for p, r in IGNORED_OFFICIAL_KEYS if re.search(p, key)), None)
        if reason:
            ignored.append((key, reason))
            continue
        m = _TOWER.match(key)
        if m:
            idx, rest = int(m.group(1)), m.group(2)
            if fused:
                block, kind = divmod(idx, 3)
                table, sub = [
                    (FUSE_KEY_MAP, "fuse"),
                    (TEXT_LAYER_KEY_MAP, "text_layer"),
                    (DYCONV_KEY_MAP, "dyconv"),
                ][kind]
            else:
                block, table, sub = idx, DYCONV_KEY_MAP, "dyconv"
            new = _apply(table, rest)
            new = f"head.tower.blocks.{block}.{sub}.{new}" if new is not None else None
        else:
            new = _apply(HEAD_KEY_MAP, key)
        if new is None:
            unmapped.append(key)
        else:
            out[new] = value
    return out, {"ignored": ignored, "unmapped": unmapped}
