"""Modulated deformable 3x3 conv on torchvision's kernel, with the official offset read-out."""
import math

import torch
from torch import nn
from torchvision.ops import deform_conv2d


def offsets_for_output(
    offset: torch.Tensor, mask: torch.Tensor, out_hw, raw_prefix: bool = True
):
    """Return (offset, mask) laid out on the conv's output grid.

    GLIP computes one offset/mask map on level l and reuses it for the convs on levels l-1
    (stride 2, same output grid) and l+1 (stride 1, a SMALLER output grid). The official CUDA
    kernel then reads the level-l maps' raw memory as if they had the output grid's shape: the
    first 18*Ho*Wo offset values (and 9*Ho*Wo mask values) in row-major (C, H, W) order.
    `raw_prefix=True` reproduces exactly that (needed for official checkpoints); False resamples
    the maps bilinearly (a cleaner field, but not the official numerics).

    Args:
        offset: (B, 2*9, H, W) (dy, dx) per tap. mask: (B, 9, H, W).
        out_hw: (Ho, Wo) of the conv output.
    """
    ho, wo = int(out_hw[0]), int(out_hw[1])
    b, c_off, h, w = offset.shape
    if (h, w) == (ho, wo):
        return offset, mask
    if raw_prefix:
        if ho * wo > h * w:
            raise ValueError(f"offset grid {h}x{w} smaller than output grid {ho}x{wo}")
        off = offset.reshape(b, -1)[:, : c_off * ho * wo].reshape(b, c_off, ho, wo)
        msk = mask.reshape(b, -1)[:, : mask.shape[1] * ho * wo].reshape(b, mask.shape[1], ho, wo)
        return off, msk
    # Resampled: displacements are in input pixels of the level the conv reads from.
    scale = torch.tensor([ho / h, wo / w], dtype=offset.dtype, device=offset.device)
    off = nn.functional.interpolate(offset, size=(ho, wo), mode="bilinear", align_corners=False)
    off = (off.view(b, -1, 2, ho, wo) * scale.view(1, 1, 2, 1, 1)).view(b, c_off, ho, wo)
    msk = nn.functional.interpolate(mask, size=(ho, wo), mode="bilinear", align_corners=False)
    return off, msk


class ModulatedDeformConv3x3(nn.Module):
    """3x3 modulated deformable conv (DCNv2), padding 1, with bias."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, raw_prefix: bool = True):
        super().__init__()
        self.stride = stride
        self.raw_prefix = raw_prefix
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ho = (x.shape[-2] + 2 - 3) // self.stride + 1
        wo = (x.shape[-1] + 2 - 3) // self.stride + 1
        offset, mask = offsets_for_output(offset, mask, (ho, wo), self.raw_prefix)
        # torchvision's CPU/CUDA kernels need matching dtypes (autocast may hand us a mix).
        dtype = x.dtype
        return deform_conv2d(
            x,
            offset.to(dtype),
            self.weight.to(dtype),
            self.bias.to(dtype),
            stride=self.stride,
            padding=1,
            mask=mask.to(dtype),
        )
