"""FPN with P6/P7 from P5 over a bottom-up backbone (GLIP's "*-FPN-RETINANET"), and the key map
from the official checkpoint's `backbone.*` to this module.

Detectron2's `FPN` matches maskrcnn-benchmark's FPN used by GLIP (1x1 lateral + 3x3 output convs
with bias, "sum" fusion, nearest top-down upsampling, P6 = conv(P5), P7 = conv(relu(P6))) with
one exception: Detectron2 upsamples with `scale_factor=2`, the official FPN to the lateral's size.
For inputs whose size is a multiple of the coarsest stride (Detectron2 pads to
`size_divisibility` = 32) both give the same nearest-neighbour indices, bit for bit. For other
sizes a Swin stage has ceil(H / stride) rows, so 2x upsampling overshoots (e.g. 7 -> 14 for a
13-row lateral) and Detectron2's FPN fails; `GLIPFPN` interpolates to the lateral's size exactly
like the official code and works for any size.
"""

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7

from .swin import SwinTransformer

__all__ = [
    "GLIPFPN",
    "build_retinanet_style_fpn",
    "build_swin_fpn_retinanet_backbone",
    "OFFICIAL_BACKBONE_KEY_MAP",
    "convert_official_backbone_state_dict",
]


class GLIPFPN(FPN):
    """Detectron2 `FPN` whose top-down path upsamples (nearest) to each lateral's exact size."""

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        bottom_up_features = self.bottom_up(x)
        prev_features = self.lateral_convs[0](bottom_up_features[self.in_features[-1]])
        results = [self.output_convs[0](prev_features)]
        for idx, (lateral_conv, output_conv) in enumerate(
            zip(self.lateral_convs, self.output_convs)
        ):
            if idx == 0:
                continue
            lateral_features = lateral_conv(bottom_up_features[self.in_features[-idx - 1]])
            top_down_features = F.interpolate(
                prev_features, size=lateral_features.shape[-2:], mode="nearest"
            )
            prev_features = lateral_features + top_down_features
            if self._fuse_type == "avg":
                prev_features /= 2
            results.insert(0, output_conv(prev_features))

        if self.top_block is not None:
            if self.top_block.in_feature in bottom_up_features:
                top_block_in_feature = bottom_up_features[self.top_block.in_feature]
            else:
                top_block_in_feature = results[self._out_features.index(self.top_block.in_feature)]
            results.extend(self.top_block(top_block_in_feature))
        assert len(self._out_features) == len(results)
        return dict(zip(self._out_features, results))


def build_retinanet_style_fpn(bottom_up: Backbone, in_features: Sequence[str], cfg) -> GLIPFPN:
    """FPN giving p3..p7 over three bottom-up features at strides 8/16/32, P6/P7 from P5.

    This is GLIP's "*-FPN-RETINANET" neck for any bottom-up `Backbone` (Swin, ResNet with
    in_features ["res3", "res4", "res5"], ...). Detectron2's own
    `build_retinanet_resnet_fpn_backbone` differs: its P6 comes from C5 (res5), not P5.
    The two extra levels always come from the coarsest FPN output (P5 above; over strides
    4/8/16 they are P5/P6 from P4).

    Args:
        bottom_up: backbone producing `in_features`.
        in_features: consecutive features (three in GLIP), high to low resolution.
        cfg: reads MODEL.FPN.OUT_CHANNELS, MODEL.FPN.NORM and MODEL.FPN.FUSE_TYPE.
    """
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    # Detectron2 names an FPN output "p<log2 stride>"; a fixed "p5" was the wrong level (or a
    # top-block output itself) when the coarsest input is not at stride 32.
    coarsest = int(math.log2(bottom_up.output_shape()[in_features[-1]].stride))
    return GLIPFPN(
        bottom_up=bottom_up,
        in_features=list(in_features),
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(out_channels, out_channels, in_feature=f"p{coarsest}"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_swin_fpn_retinanet_backbone(cfg, input_shape: ShapeSpec):
    """Swin (`cfg.MODEL.SWIN.*`) + FPN over its stage3..stage5, giving p3..p7 (official
    SWINT-FPN-RETINANET). The FPN's inputs are `cfg.MODEL.SWIN.OUT_FEATURES`."""
    bottom_up = SwinTransformer(cfg, input_shape)
    return build_retinanet_style_fpn(bottom_up, cfg.MODEL.SWIN.OUT_FEATURES, cfg)


# (official prefix, glip_d2 prefix) for the keys of the official `backbone.*` (GeneralizedVLRCNN
# with SWINT-FPN-RETINANET, `module.` removed) -> keys of the module built by
# `build_swin_fpn_retinanet_backbone`. Official fpn_inner{k}/fpn_layer{k} are numbered from 1 over
# [C2 (absent), C3, C4, C5]; Detectron2 numbers its convs by log2(stride).
OFFICIAL_BACKBONE_KEY_MAP: List[Tuple[str, str]] = [
    ("backbone.body.", "bottom_up."),
    ("backbone.fpn.fpn_inner2.", "fpn_lateral3."),
    ("backbone.fpn.fpn_inner3.", "fpn_lateral4."),
    ("backbone.fpn.fpn_inner4.", "fpn_lateral5."),
    ("backbone.fpn.fpn_layer2.", "fpn_output3."),
    ("backbone.fpn.fpn_layer3.", "fpn_output4."),
    ("backbone.fpn.fpn_layer4.", "fpn_output5."),
    ("backbone.fpn.top_blocks.p6.", "top_block.p6."),
    ("backbone.fpn.top_blocks.p7.", "top_block.p7."),
]


def convert_official_backbone_state_dict(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename an official GLIP Swin-FPN `backbone.*` state dict to this FPN backbone's keys.

    Args:
        sd: official tensors, keys without "module." and starting with "backbone."
            (e.g. "backbone.body.layers.0.blocks.0.attn.qkv.weight").

    Returns:
        dict with keys relative to the module of `build_swin_fpn_retinanet_backbone`
        (e.g. "bottom_up.layers.0.blocks.0.attn.qkv.weight"); tensors are not copied.

    Raises:
        KeyError: for a key no rule of `OFFICIAL_BACKBONE_KEY_MAP` covers (pass only the
            `backbone.` part of the checkpoint, without the "module." prefix).
    """
    out = {}
    for key, value in sd.items():
        for official, ours in OFFICIAL_BACKBONE_KEY_MAP:
            if key.startswith(official):
                out[ours + key[len(official) :]] = value
                break
        else:
            raise KeyError(
                f"No rule in OFFICIAL_BACKBONE_KEY_MAP for {key!r}; pass only the official "
                "'backbone.*' keys with the 'module.' prefix removed"
            )
    return out
