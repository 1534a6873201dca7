"""VL-DyHead: the fusion tower shared by GLIP's heads (deep fusion + DyHead)."""
from typing import List, Sequence, Tuple

import torch
import torch.utils.checkpoint as cp
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import nn

from .bert_layer import BertEncoderLayer
from .bi_attention import VLFuse
from .dyconv import DyConv

FUSION_TOWER_REGISTRY = Registry("FUSION_TOWER")
FUSION_TOWER_REGISTRY.__doc__ = """
Registry for vision-language fusion towers. The registered object is called with
`obj(cfg, language_dim)` and returns an `nn.Module` whose
`forward(visual: List[Tensor(B, C, Hl, Wl)], lang: Tensor(B, T, D), mask: LongTensor(B, T))`
returns `(visual_out: List[Tensor], lang_out: Tensor(B, T, D))` with the same shapes.
"""


def check_pyramid_levels(key: str, names: Sequence[str], strides: Sequence[int]) -> None:
    """The VL-DyHead tower mixes each level with a stride-2 conv of the level before it and an
    upsampling of the one after it, so it reads consecutive stride-2 levels, finest first.

    Raises:
        ValueError: naming ``key``, when the strides of ``names`` are not s, 2s, 4s, ... (levels
            out of order or with a gap would fail at the first forward with a size mismatch).
    """
    strides = [int(x) for x in strides]
    if any(b != 2 * a for a, b in zip(strides, strides[1:])):
        raise ValueError(
            f"{key} {list(names)} have strides {strides}: the VL-DyHead tower needs consecutive "
            "pyramid levels, finest first, each at twice the stride of the one before (e.g. "
            "['p3', 'p4', 'p5']); reorder them or fill the gap."
        )


class FusedBlock(nn.Module):
    """One DyHead layer: VLFuse -> BertEncoderLayer (text) -> DyConv (image)."""

    def __init__(self, fuse: nn.Module, text_layer: nn.Module, dyconv: nn.Module, use_checkpoint: bool):
        super().__init__()
        self.fuse = fuse
        self.text_layer = text_layer
        self.dyconv = dyconv
        self.use_checkpoint = use_checkpoint

    def forward(self, visual, lang, mask):
        if self.fuse is not None:
            if self.use_checkpoint and self.training:
                n = len(visual)
                outs = cp.checkpoint(
                    lambda *a: _flat(self.fuse(list(a[:n]), a[n], a[n + 1])),
                    *visual, lang, mask, use_reentrant=False,
                )
                visual, lang = list(outs[:-1]), outs[-1]
            else:
                visual, lang = self.fuse(visual, lang, mask)
        if self.text_layer is not None:
            lang = self.text_layer(lang, mask)
        return self.dyconv(visual), lang


def _flat(out):
    visual, lang = out
    return (*visual, lang)


@FUSION_TOWER_REGISTRY.register()
class VLDyHeadTower(nn.Module):
    """NUM_CONVS blocks of [VLFuse, BertEncoderLayer, DyConv] (deep fusion) or DyConv alone."""

    @configurable
    def __init__(
        self,
        *,
        channels: int,
        language_dim: int,
        num_blocks: int = 6,
        early_fuse: bool = True,
        fuse_text_layer: bool = True,
        embed_dim: int = 2048,
        num_heads: int = 8,
        dropout: float = 0.1,
        use_layer_scale: bool = True,
        clamp_min: bool = True,
        clamp_max: bool = True,
        bert_clamp_min: bool = True,
        bert_clamp_max: bool = True,
        bert_heads: int = 12,
        bert_intermediate: int = 3072,
        use_deform: bool = True,
        use_dyfuse: bool = True,
        use_dyrelu: bool = True,
        gn_groups: int = 16,
        offset_raw_prefix: bool = True,
        deform_impl: str = "auto",
        use_checkpoint: bool = False,
        attention: str = "official",
        conv_init_std: float = 0.01,
        residual: bool = False,
    ):
        super().__init__()
        self.early_fuse = early_fuse
        blocks = []
        for i in range(num_blocks):
            fuse = text = None
            if early_fuse:
                fuse = VLFuse(
                    channels, language_dim, embed_dim, num_heads, dropout,
                    init_scale=(1.0 / num_blocks) if use_layer_scale else 1.0,
                    clamp_min=clamp_min, clamp_max=clamp_max, attention=attention,
                )
                # The last block's text layer only exists when the head scores with fused text.
                if i < num_blocks - 1 or fuse_text_layer:
                    text = BertEncoderLayer(
                        language_dim, bert_heads, bert_intermediate, dropout,
                        clamp_min=bert_clamp_min, clamp_max=bert_clamp_max,
                    )
            dy = DyConv(
                channels, use_deform=use_deform, use_dyfuse=use_dyfuse, use_dyrelu=use_dyrelu,
                gn_groups=gn_groups, raw_prefix=offset_raw_prefix, conv_init_std=conv_init_std,
                residual=residual, deform_impl=deform_impl,
            )
            blocks.append(FusedBlock(fuse, text, dy, use_checkpoint))
        self.blocks = nn.ModuleList(blocks)

    @classmethod
    def from_config(cls, cfg, language_dim: int):
        dh, fc = cfg.MODEL.DYHEAD, cfg.MODEL.DYHEAD.FUSE_CONFIG
        # BERT-base geometry scales with the text width (768 -> 12 heads of 64, 4x MLP).
        return dict(
            channels=dh.CHANNELS,
            language_dim=language_dim,
            num_blocks=dh.NUM_CONVS,
            early_fuse=fc.EARLY_FUSE_ON,
            fuse_text_layer=fc.USE_FUSED_FEATURES_DOT_PRODUCT,
            embed_dim=fc.EMBED_DIM,
            num_heads=fc.NUM_HEADS,
            dropout=fc.DROPOUT,
            use_layer_scale=fc.USE_LAYER_SCALE,
            clamp_min=fc.CLAMP_MIN_FOR_UNDERFLOW,
            clamp_max=fc.CLAMP_MAX_FOR_OVERFLOW,
            bert_clamp_min=fc.CLAMP_BERTATTN_MIN_FOR_UNDERFLOW,
            bert_clamp_max=fc.CLAMP_BERTATTN_MAX_FOR_OVERFLOW,
            bert_heads=max(1, language_dim // 64),
            bert_intermediate=4 * language_dim,
            use_deform=dh.USE_DFCONV,
            use_dyfuse=dh.USE_DYFUSE,
            use_dyrelu=dh.USE_DYRELU,
            gn_groups=dh.GN_GROUPS if dh.USE_GN else 0,
            offset_raw_prefix=dh.OFFSET_RAW_PREFIX,
            deform_impl=dh.DEFORM_IMPL,
            use_checkpoint=dh.USE_CHECKPOINT,
            attention=fc.ATTENTION,
            conv_init_std=dh.CONV_INIT_STD,
            residual=dh.RESIDUAL,
        )

    def forward(
        self, visual: List[torch.Tensor], lang: torch.Tensor, mask: torch.Tensor
    ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        for block in self.blocks:
            visual, lang = block(visual, lang, mask)
        return visual, lang


def build_fusion_tower(cfg, language_dim: int) -> nn.Module:
    """Build the tower named by `cfg.MODEL.DYHEAD.NAME`."""
    return FUSION_TOWER_REGISTRY.get(cfg.MODEL.DYHEAD.NAME)(cfg, language_dim=language_dim)
