"""Modulated deformable 3x3 conv (DCNv2) with the official offset read-out, on torchvision's
kernel or, for CPU training, on gathers autograd can differentiate.

torchvision's CPU backward took a third of a GLIP-T training step on the CPU (17 s of 50 s on one
thread). The same sampling written with ``gather`` and one matmul gives torchvision's forward to the
bit, and autograd's backward is ~6x faster than torchvision's on the CPU
(``benchmarks/bench_deform.py``); its forward is about as fast, so inference keeps torchvision's
kernel. The sampled columns are recomputed in the backward rather than kept. GPUs keep
torchvision's kernel throughout.
"""
import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import deform_conv2d

# MODEL.DYHEAD.DEFORM_IMPL values
DEFORM_IMPLS = ("auto", "torchvision", "gather")


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


def deform_conv3x3_by_gather(
    x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int,
    mask: torch.Tensor,
) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d(x, offset, weight, bias, stride, padding=1, mask=mask)``
    for a 3x3 kernel, from plain tensor ops (so autograd gives the backward).

    Tap k = 3*ky + kx of output pixel (i, j) reads the input at
    (i*stride - 1 + ky + offset[2k], j*stride - 1 + kx + offset[2k+1]), bilinearly from its four
    neighbours, a neighbour outside the image counting 0, times mask[k]. This is torchvision's (and
    the official CUDA kernel's) arithmetic step by step, so the output equals torchvision's to the
    bit on the CPU; the gradients agree to float rounding (~1e-6 relative; torchvision's backward
    sums in another order), also at the kinks where a tap sits exactly on a pixel row or column,
    where both take the derivative from above. Half-precision input is computed in float32 (its
    sample coordinates would be off by up to 1/8 pixel in float16) and the result cast back.
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        out = deform_conv3x3_by_gather(
            x.float(), offset.float(), weight.float(), bias.float(), stride, mask.float()
        )
        return out.to(x.dtype)
    b, c, h, w = x.shape
    ho, wo = offset.shape[-2:]
    taps = torch.arange(3, dtype=x.dtype, device=x.device) - 1
    rows = torch.arange(ho, dtype=x.dtype, device=x.device) * stride
    cols = torch.arange(wo, dtype=x.dtype, device=x.device) * stride
    off = offset.reshape(b, 9, 2, ho, wo)
    py = (rows.view(1, 1, ho, 1) + taps.repeat_interleave(3).view(1, 9, 1, 1)) + off[:, :, 0]
    px = (cols.view(1, 1, 1, wo) + taps.repeat(3).view(1, 9, 1, 1)) + off[:, :, 1]
    y0, x0 = py.floor(), px.floor()
    ly, lx = py - y0, px - x0
    hy, hx = 1 - ly, 1 - lx
    y0, x0 = y0.long(), x0.long()
    flat = x.reshape(b, c, h * w)
    sampled = 0
    for dy, dx, weight_of_corner in ((0, 0, hy * hx), (0, 1, hy * lx), (1, 0, ly * hx), (1, 1, ly * lx)):
        yi, xi = y0 + dy, x0 + dx
        valid = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        # reshape, not view: offsets computed from the tower's channels-last levels can have
        # strides no view can flatten (e.g. a level one row high under autocast)
        index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).reshape(b, 1, -1).expand(b, c, -1)
        sampled = sampled + flat.gather(2, index) * (weight_of_corner * valid).reshape(b, 1, -1)
    columns = sampled.reshape(b, c, 9, ho, wo) * mask.reshape(b, 1, 9, ho, wo)
    out = weight.reshape(weight.shape[0], c * 9) @ columns.reshape(b, c * 9, ho * wo)
    return out.reshape(b, -1, ho, wo) + bias.view(1, -1, 1, 1)


class ModulatedDeformConv3x3(nn.Module):
    """3x3 modulated deformable conv (DCNv2), padding 1, with bias.

    ``impl``: "torchvision" (its CPU/CUDA kernel), "gather" (:func:`deform_conv3x3_by_gather`) or
    "auto" (gather when a gradient is wanted on the CPU, torchvision's kernel otherwise).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, raw_prefix: bool = True,
                 impl: str = "auto"):
        super().__init__()
        if impl not in DEFORM_IMPLS:
            raise ValueError(f"MODEL.DYHEAD.DEFORM_IMPL {impl!r} is not one of {list(DEFORM_IMPLS)}.")
        self.stride = stride
        self.raw_prefix = raw_prefix
        self.impl = impl
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ho = (x.shape[-2] + 2 - 3) // self.stride + 1
        wo = (x.shape[-1] + 2 - 3) // self.stride + 1
        offset, mask = offsets_for_output(offset, mask, (ho, wo), self.raw_prefix)
        dtype = x.dtype
        if self.impl == "gather" or (self.impl == "auto" and self._gather_is_faster(x)):
            args = (x, offset.to(dtype), self.weight.to(dtype), self.bias.to(dtype), self.stride, mask.to(dtype))
            if torch.is_grad_enabled():
                # autograd would keep ~6 copies of the 9x-sized sampled columns per conv (GLIP-T at
                # 320x480, batch 2: 11.1 GB against torchvision's 7.4); recomputing them in the
                # backward keeps torchvision's memory at a small share of the time saved
                return checkpoint(deform_conv3x3_by_gather, *args, use_reentrant=False)
            return deform_conv3x3_by_gather(*args)
        # torchvision's CPU/CUDA kernels need matching dtypes (autocast may hand us a mix) and
        # have no bfloat16 version (bfloat16 FPN levels reach here under CPU autocast when no
        # fusion precedes the DyConv). Half precision runs in float32, cast back, as torchvision's
        # CUDA autocast wrapper and the gather path do (float16 sample coordinates would be off
        # by up to 1/8 pixel; torchvision has no CPU autocast wrapper).
        run = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        return deform_conv2d(
            x.to(run),
            offset.to(run),
            self.weight.to(run),
            self.bias.to(run),
            stride=self.stride,
            padding=1,
            mask=mask.to(run),
        ).to(dtype)

    def _gather_is_faster(self, x: torch.Tensor) -> bool:
        """On the CPU when autograd will need a backward (torchvision's CPU backward is the slow part)."""
        return x.device.type == "cpu" and torch.is_grad_enabled() and (
            x.requires_grad or self.weight.requires_grad
        )
