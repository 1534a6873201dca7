"""Box geometry in the official GLIP convention (maskrcnn-benchmark: width = x2 - x1 + 1).

Detectron2 uses width = x2 - x1. The head works in the official convention internally, so
official checkpoints decode exactly as they were trained; `to_official` / `from_official`
convert at the head's boundary.
"""
import math

import torch

TO_REMOVE = 1.0
BBOX_XFORM_CLIP = math.log(1000.0 / 16)
WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def to_official(boxes: torch.Tensor) -> torch.Tensor:
    """Detectron2 xyxy -> official xyxy (x2, y2 one pixel smaller)."""
    return boxes - boxes.new_tensor([0.0, 0.0, TO_REMOVE, TO_REMOVE])


def from_official(boxes: torch.Tensor) -> torch.Tensor:
    """Official xyxy -> Detectron2 xyxy."""
    return boxes + boxes.new_tensor([0.0, 0.0, TO_REMOVE, TO_REMOVE])


def _centers_sizes(b: torch.Tensor):
    w = b[:, 2] - b[:, 0] + TO_REMOVE
    h = b[:, 3] - b[:, 1] + TO_REMOVE
    return (b[:, 2] + b[:, 0]) / 2, (b[:, 3] + b[:, 1]) / 2, w, h


def encode(gt: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(N, 4) gt and anchor boxes -> (N, 4) regression targets (dx, dy, dw, dh)."""
    ax, ay, aw, ah = _centers_sizes(anchors)
    gx, gy, gw, gh = _centers_sizes(gt)
    wx, wy, ww, wh = WEIGHTS
    return torch.stack(
        (wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * torch.log(gw / aw), wh * torch.log(gh / ah)),
        dim=1,
    )


def decode(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(N, 4) deltas applied to (N, 4) anchors -> (N, 4) xyxy boxes (official convention)."""
    anchors = anchors.to(deltas.dtype)
    ax, ay, aw, ah = _centers_sizes(anchors)
    wx, wy, ww, wh = WEIGHTS
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw = (deltas[:, 2] / ww).clamp(max=BBOX_XFORM_CLIP)
    dh = (deltas[:, 3] / wh).clamp(max=BBOX_XFORM_CLIP)
    cx, cy = dx * aw + ax, dy * ah + ay
    w, h = torch.exp(dw) * aw, torch.exp(dh) * ah
    return torch.stack(
        (cx - 0.5 * (w - 1), cy - 0.5 * (h - 1), cx + 0.5 * (w - 1), cy + 0.5 * (h - 1)), dim=1
    )


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix (len(a), len(b)) with the +1 area convention."""
    area_a = (a[:, 2] - a[:, 0] + TO_REMOVE) * (a[:, 3] - a[:, 1] + TO_REMOVE)
    area_b = (b[:, 2] - b[:, 0] + TO_REMOVE) * (b[:, 3] - b[:, 1] + TO_REMOVE)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt + TO_REMOVE).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)
