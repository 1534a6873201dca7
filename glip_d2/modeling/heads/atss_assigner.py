"""Adaptive Training Sample Selection (Zhang et al. 2020), as GLIP uses it."""
from typing import List

import torch

from .box_coder import pairwise_iou


def atss_assign(anchors_per_level: List[torch.Tensor], gt_boxes: torch.Tensor, topk: int = 9) -> torch.Tensor:
    """Assign every anchor to a ground-truth box or to background.

    Per level, the `topk` anchors whose centres are closest to a box's centre are candidates;
    a candidate is positive when its IoU >= mean + std of its box's candidate IoUs and its
    centre lies inside the box (by > 0.01 px). An anchor positive for several boxes takes the
    one with the highest IoU.

    Args:
        anchors_per_level: per level (Ni, 4) anchors, official xyxy convention.
        gt_boxes: (G, 4) boxes, same convention.
        topk: candidates per level.
    Returns:
        (sum Ni,) long tensor: index of the assigned box, or -1 for background.
    """
    anchors = torch.cat(anchors_per_level)
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    if num_gt == 0:
        return torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    ious = pairwise_iou(anchors, gt_boxes)  # (A, G)
    a_ctr = (anchors[:, :2] + anchors[:, 2:]) / 2
    g_ctr = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    dist = (a_ctr[:, None, :] - g_ctr[None, :, :]).pow(2).sum(-1).sqrt()  # (A, G)

    candidates, start = [], 0
    for level in anchors_per_level:
        end = start + level.shape[0]
        k = min(topk, level.shape[0])
        _, idx = dist[start:end].topk(k, dim=0, largest=False)
        candidates.append(idx + start)
        start = end
    candidates = torch.cat(candidates, dim=0)  # (K, G)
    gt_range = torch.arange(num_gt, device=anchors.device)
    cand_ious = ious[candidates, gt_range]
    thresh = cand_ious.mean(0) + cand_ious.std(0)
    is_pos = cand_ious >= thresh[None, :]

    cx, cy = a_ctr[candidates, 0], a_ctr[candidates, 1]  # (K, G)
    inside = torch.stack(
        [cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy], dim=0
    ).min(dim=0)[0] > 0.01
    is_pos &= inside

    masked = torch.full_like(ious, float("-inf"))
    gt_idx = gt_range.expand_as(candidates)
    masked[candidates[is_pos], gt_idx[is_pos]] = ious[candidates[is_pos], gt_idx[is_pos]]
    best, assigned = masked.max(dim=1)
    assigned[best == float("-inf")] = -1
    return assigned
