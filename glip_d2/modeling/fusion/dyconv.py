"""DyConv: DyHead's image-side block (scale-aware + spatial-aware (DCN) + task-aware (DyReLU))."""
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from .deform import ModulatedDeformConv3x3


def h_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3.0) / 6.0


class DyReLU(nn.Module):
    """Dynamic ReLU-B (two coefficient pairs per channel from a squeeze-excite MLP)."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.channels = channels
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels * 4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        y = h_sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1).view(b, c))).view(b, 4 * c, 1, 1)
        a1, b1, a2, b2 = torch.split(y, c, dim=1)
        # lambda_a = 2, init_a = (1, 0), init_b = (0, 0)
        a1 = (a1 - 0.5) * 2.0 + 1.0
        a2 = (a2 - 0.5) * 2.0
        b1 = b1 - 0.5
        b2 = b2 - 0.5
        return torch.max(x * a1 + b1, x * a2 + b2)


class ConvNorm(nn.Module):
    """3x3 conv (deformable or plain) followed by GroupNorm (or nothing)."""

    def __init__(self, channels: int, stride: int, deformable: bool, gn_groups: int, raw_prefix: bool,
                 init_std: float = 0.01, deform_impl: str = "auto"):
        super().__init__()
        self.deformable = deformable
        if deformable:
            # Keeps its own U(+-1/sqrt(fan_in)) init: the official DyConv.init_weights re-initialises
            # only nn.Conv2d modules, which maskrcnn-benchmark's ModulatedDeformConv is not.
            self.conv = ModulatedDeformConv3x3(channels, channels, stride, raw_prefix, deform_impl)
        else:
            self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1)
            nn.init.normal_(self.conv.weight, 0, init_std)
        self.norm = nn.GroupNorm(gn_groups, channels) if gn_groups > 0 else nn.Identity()
        nn.init.zeros_(self.conv.bias)

    def forward(self, x, offset=None, mask=None):
        x = self.conv(x, offset, mask) if self.deformable else self.conv(x)
        return self.norm(x)


class DyConv(nn.Module):
    """One DyHead block over all pyramid levels.

    Level l mixes conv(x_l), a stride-2 conv of x_{l-1} and a bilinearly upsampled conv of
    x_{l+1}, weighted by a hard-sigmoid scale attention, then DyReLU.
    """

    def __init__(
        self,
        channels: int = 256,
        *,
        use_deform: bool = True,
        use_dyfuse: bool = True,
        use_dyrelu: bool = True,
        gn_groups: int = 16,
        raw_prefix: bool = True,
        conv_init_std: float = 0.01,
        residual: bool = False,
        deform_impl: str = "auto",
    ):
        super().__init__()
        self.residual = residual
        # convs[0]: on the next (smaller) level, convs[1]: same level, convs[2]: previous level, stride 2
        self.convs = nn.ModuleList(
            [ConvNorm(channels, s, use_deform, gn_groups, raw_prefix, conv_init_std, deform_impl)
             for s in (1, 1, 2)]
        )
        self.scale_attn = nn.Conv2d(channels, 1, kernel_size=1) if use_dyfuse else None
        if self.scale_attn is not None:
            nn.init.normal_(self.scale_attn.weight, 0, 0.01)
            nn.init.zeros_(self.scale_attn.bias)
        self.dyrelu = DyReLU(channels) if use_dyrelu else None
        self.offset = nn.Conv2d(channels, 27, 3, padding=1) if use_deform else None

    def forward(self, feats: List[torch.Tensor]) -> List[torch.Tensor]:
        out = []
        for level, x in enumerate(feats):
            kw = {}
            if self.offset is not None:
                om = self.offset(x)
                kw = dict(offset=om[:, :18], mask=om[:, 18:].sigmoid())
            terms = [self.convs[1](x, **kw)]
            if level > 0:
                terms.append(self.convs[2](feats[level - 1], **kw))
            if level < len(feats) - 1:
                up = self.convs[0](feats[level + 1], **kw)
                terms.append(F.interpolate(up, size=x.shape[-2:], mode="bilinear", align_corners=True))
            stacked = torch.stack(terms)
            if self.scale_attn is not None:
                attn = torch.stack(
                    [F.relu(self.scale_attn(F.adaptive_avg_pool2d(t, 1))) for t in terms]
                )
                fused = (stacked * h_sigmoid(attn)).mean(dim=0)
            else:
                fused = stacked.mean(dim=0)
            out.append(fused)
        out = [self.dyrelu(f) for f in out] if self.dyrelu is not None else [F.relu(f) for f in out]
        if self.residual:  # identity shortcut (not official; MODEL.DYHEAD.RESIDUAL)
            out = [x + f for x, f in zip(feats, out)]
        return out
