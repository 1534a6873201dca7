"""Box-pooled region features for the one-stage scorer (not official GLIP).

GLIP scores the words at each anchor from the tower feature at that one location. On the shapes
demo a linear read-out of the shape from the FPN point feature at a box centre finds 57-62 %
of the shapes, from a 2x2 RoIAlign over the box 89 % (docs/one_stage_demo.md): what an object
is lies in its layout over the box, which a two-stage RoI head pools and a point does not.

`BoxPooledRegions` adds to every location's scoring feature a learned linear read-out of a k x k
RoIAlign over the box that location regresses (detached: the naming loss does not move boxes),
on the same level's features. At the start of training the regressed box is the anchor box.
"""
import torch
from torch import nn
from torchvision.ops import roi_align

from . import box_coder


class BoxPooledRegions(nn.Module):
    """Args:
        channels: width C of the scoring features.
        bins: k, the RoIAlign output is k x k (k*k*C numbers, mapped back to C).
        hidden: 0 = a linear read-out; > 0 = a two-layer MLP with that many ReLU units.
        sampling_ratio: RoIAlign samples per bin side.
    """

    def __init__(self, channels: int, bins: int = 2, hidden: int = 0, sampling_ratio: int = 2):
        super().__init__()
        if bins < 1:
            raise ValueError(f"MODEL.ATSS.REGION_POOL must be >= 1 bins per side to pool, got {bins}.")
        self.bins, self.sampling_ratio = bins, sampling_ratio
        pooled = channels * bins * bins
        self.hidden = nn.Sequential(nn.Linear(pooled, hidden), nn.ReLU()) if hidden > 0 else nn.Identity()
        self.read = nn.Linear(hidden or pooled, channels)
        nn.init.normal_(self.read.weight, std=0.01)
        nn.init.zeros_(self.read.bias)

    def forward(self, features: torch.Tensor, box_regression: torch.Tensor, anchors: torch.Tensor,
                stride: int) -> torch.Tensor:
        """
        Args:
            features: (B, C, H, W) scoring features of one level.
            box_regression: (B, 4, H, W) the head's deltas at that level.
            anchors: (H*W, 4) the level's anchors (official convention, row = y*W + x).
            stride: the level's stride in input pixels.
        Returns:
            (B, H*W, C): each location's feature plus the read-out of its box's pooled features.
        """
        b, c, h, w = features.shape
        deltas = box_regression.detach().permute(0, 2, 3, 1).reshape(-1, 4).float()
        boxes = box_coder.from_official(box_coder.decode(deltas, anchors.repeat(b, 1)))
        index = torch.arange(b, device=features.device, dtype=boxes.dtype).repeat_interleave(h * w)
        rois = torch.cat([index[:, None], boxes], dim=1).to(features.dtype)
        pooled = roi_align(features, rois, self.bins, 1.0 / stride, self.sampling_ratio, aligned=True)
        points = features.flatten(2).transpose(1, 2)
        return points + self.read(self.hidden(pooled.reshape(b, h * w, -1)))
