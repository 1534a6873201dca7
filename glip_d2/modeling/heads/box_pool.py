"""Box-pooled region features for the one-stage scorer (not official GLIP).

GLIP scores the words at each anchor from the tower feature at that one location. On the shapes
demo a linear read-out of the shape from the FPN point feature at a box centre finds 57-62 %
of the shapes, from a 2x2 RoIAlign over the box 89 % (docs/one_stage_demo.md): what an object
is lies in its layout over the box, which a two-stage RoI head pools and a point does not.

`BoxPooledRegions` adds to every location's scoring feature a learned linear read-out of a k x k
RoIAlign over the box that location regresses (detached: the naming loss does not move boxes),
on the same level's features or on one fixed level's (``MODEL.ATSS.REGION_POOL_FROM_LEVEL``).
At the start of training the regressed box is the anchor box.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import box_coder


class BoxPooledRegions(nn.Module):
    """Args:
        channels: width C of the scoring features.
        bins: k, the box is pooled into k x k bins (k*k*R numbers, read back to C).
        hidden: 0 = a linear read-out; > 0 = a two-layer MLP with that many ReLU units.
        sampling_ratio: bilinear samples per bin side (RoIAlign's sampling ratio).
        reduce_channels: R > 0 maps the features to R channels (1x1 conv) before pooling, which
            divides the pooling cost by C / R; 0 pools all C channels.
    """

    def __init__(self, channels: int, bins: int = 2, hidden: int = 0, sampling_ratio: int = 1,
                 reduce_channels: int = 0):
        super().__init__()
        if bins < 1:
            raise ValueError(f"MODEL.ATSS.REGION_POOL must be >= 1 bins per side to pool, got {bins}.")
        if sampling_ratio < 1:
            raise ValueError(f"MODEL.ATSS.REGION_POOL_SAMPLING must be >= 1, got {sampling_ratio}.")
        self.bins, self.sampling_ratio = bins, sampling_ratio
        self.reduce = nn.Conv2d(channels, reduce_channels, 1) if reduce_channels > 0 else nn.Identity()
        pooled = (reduce_channels or channels) * bins * bins
        self.hidden = nn.Sequential(nn.Linear(pooled, hidden), nn.ReLU()) if hidden > 0 else nn.Identity()
        self.read = nn.Linear(hidden or pooled, channels)
        nn.init.normal_(self.read.weight, std=0.01)
        nn.init.zeros_(self.read.bias)

    def forward(self, features: torch.Tensor, box_regression: torch.Tensor, anchors: torch.Tensor,
                stride: int, source: Optional[torch.Tensor] = None,
                source_stride: Optional[int] = None) -> torch.Tensor:
        """
        Args:
            features: (B, C, H, W) scoring features of one level.
            box_regression: (B, 4, H, W) the head's deltas at that level.
            anchors: (H*W, 4) the level's anchors (official convention, row = y*W + x).
            stride: the level's stride in input pixels.
            source, source_stride: the map the boxes are pooled from, already passed through
                ``self.reduce`` (so one reduction serves every level), and its stride. Default:
                ``self.reduce(features)`` and ``stride``; e.g. the reduced P3 for every level,
                where a box covers more cells.
        Returns:
            (B, H*W, C): each location's feature plus the read-out of its box's pooled features.
        """
        b, _, h, w = features.shape
        if source is None:
            source, source_stride = self.reduce(features), stride
        deltas = box_regression.detach().permute(0, 2, 3, 1).reshape(-1, 4).float()
        boxes = box_coder.from_official(box_coder.decode(deltas, anchors.repeat(b, 1)))
        boxes = boxes.view(b, h * w, 4) / source_stride  # source-map units
        pooled = pool_boxes(source, boxes, self.bins, self.sampling_ratio)
        points = features.flatten(2).transpose(1, 2)
        return points + self.read(self.hidden(pooled.flatten(2)))


def pool_boxes(features: torch.Tensor, boxes: torch.Tensor, bins: int, sampling_ratio: int) -> torch.Tensor:
    """RoIAlign (aligned, fixed sampling ratio) of N boxes per image, as one ``grid_sample``.

    torchvision's CPU ``roi_align`` loops over the boxes; here every location of a level has a
    box (6272 boxes at P3 for a batch of 8 at 224 px), and one batched bilinear sampling is
    several times faster forward and backward. Inside the map the values equal ``roi_align``'s
    (tested); a sample outside it reads the border (``roi_align``: the border up to one cell out,
    zero beyond).

    Args:
        features: (B, C, H, W).
        boxes: (B, N, 4) xyxy in feature-map units (input pixels / stride).
        bins, sampling_ratio: k x k bins of sampling_ratio^2 samples each.
    Returns:
        (B, N, C, k, k), the mean of each bin's samples.
    """
    b, c, h, w = features.shape
    n, k, s = boxes.shape[1], bins, sampling_ratio
    # aligned: feature (i, j) sits at (i + 0.5, j + 0.5) in box units
    boxes = boxes - 0.5
    steps = (torch.arange(k, device=boxes.device, dtype=boxes.dtype)[:, None]
             + (torch.arange(s, device=boxes.device, dtype=boxes.dtype)[None, :] + 0.5) / s).flatten() / k
    xs = boxes[..., 0:1] + (boxes[..., 2:3] - boxes[..., 0:1]) * steps  # (B, N, k*s)
    ys = boxes[..., 1:2] + (boxes[..., 3:4] - boxes[..., 1:2]) * steps
    m = k * s
    gx = (xs / max(w - 1, 1) * 2 - 1)[:, :, None, :].expand(b, n, m, m)
    gy = (ys / max(h - 1, 1) * 2 - 1)[:, :, :, None].expand(b, n, m, m)
    grid = torch.stack([gx, gy], dim=-1).reshape(b, n, m * m, 2).to(features.dtype)
    samples = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return samples.view(b, c, n, k, s, k, s).mean((4, 6)).permute(0, 2, 1, 3, 4)
