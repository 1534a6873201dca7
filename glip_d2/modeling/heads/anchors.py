"""One square anchor per location and level (GLIP / ATSS), official pixel convention."""
from typing import List, Sequence, Tuple

import torch


def cell_anchor(size: float, stride: int) -> torch.Tensor:
    """The anchor at grid cell (0, 0): centred on (stride-1)/2 with side `size` (+1 convention).

    Size 64 at stride 8 gives [-28, -28, 35, 35], the official value.
    """
    c = (stride - 1) / 2.0
    half = (size - 1) / 2.0
    return torch.tensor([c - half, c - half, c + half, c + half], dtype=torch.float32)


def grid_anchors(
    sizes: Sequence[float], strides: Sequence[int], grid_hw: Sequence[Tuple[int, int]], device=None
) -> List[torch.Tensor]:
    """Per level an (H*W, 4) tensor of anchors, row = y*W + x."""
    out = []
    for size, stride, (h, w) in zip(sizes, strides, grid_hw):
        ys = torch.arange(h, dtype=torch.float32, device=device) * stride
        xs = torch.arange(w, dtype=torch.float32, device=device) * stride
        sy, sx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 4)
        out.append(shifts + cell_anchor(size, stride).to(device))
    return out


def tower_level_strides(cfg, levels: int, key: str) -> List[int]:
    """Strides of the first ``levels`` fused tower levels (P3...), for heads that pool them;
    ``key`` names the config key that set ``levels`` in the error."""
    strides = list(cfg.MODEL.ATSS.ANCHOR_STRIDES)
    if not 1 <= levels <= len(strides):
        raise ValueError(f"{key} must be in [1, {len(strides)}] (the tower's levels), got {levels}.")
    return strides[:levels]
