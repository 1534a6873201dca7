"""Phrases of grounding data at test time: their ground truth and the model's ranked boxes.

At test time ``GroundingDatasetMapper`` numbers an image's phrases (``phrase_spans``) and the
model's ``pred_classes`` are those numbers. :func:`phrase_boxes` numbers the phrases of a dataset
dict the same way (``phrase_id`` if present, else the sorted spans, in order of first appearance
among annotations with spans), so the ground truth of phrase ``j`` is compared with the
predictions of class ``j``.
"""

from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.structures import BoxMode

__all__ = ["phrase_boxes", "ranked_boxes", "box_iou", "generalized_box_iou", "hits_at_k"]


def phrase_boxes(record: dict) -> List[np.ndarray]:
    """Ground-truth boxes (``(n, 4)`` XYXY, absolute) of each phrase index of a dataset dict."""
    index: Dict[object, int] = {}
    boxes: List[list] = []
    for anno in record.get("annotations", []):
        spans = anno.get("tokens_positive") or []
        if not spans:
            continue  # the mapper drops these: they ground nothing
        key = (
            ("id", anno["phrase_id"])
            if "phrase_id" in anno
            else tuple(sorted(tuple(s) for s in spans))
        )
        k = index.setdefault(key, len(index))
        if k == len(boxes):
            boxes.append([])
        mode = anno.get("bbox_mode", BoxMode.XYWH_ABS)
        boxes[k].append(BoxMode.convert(list(anno["bbox"]), mode, BoxMode.XYXY_ABS))
    return [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes]


def ranked_boxes(instances, num_phrases: int, k: Optional[int]) -> List[np.ndarray]:
    """For each phrase index, the boxes predicted for it, best score first, at most ``k``
    (None: all).

    Args:
        instances: model output (``pred_boxes``, ``scores``, ``pred_classes`` = phrase index).
        num_phrases: phrases of the input; predictions of other classes are ignored.
        k: boxes kept per phrase (None: all).

    Returns:
        ``num_phrases`` arrays of shape ``(<= k, 4)`` (XYXY).
    """
    instances = instances.to("cpu")
    boxes = instances.pred_boxes.tensor.numpy().astype(np.float64)
    scores = instances.scores.numpy()
    classes = instances.pred_classes.numpy()
    order = np.argsort(-scores, kind="stable")
    out = []
    for j in range(num_phrases):
        idx = order[classes[order] == j][:k]
        out.append(boxes[idx].reshape(-1, 4))
    return out


def _inter_union(a: np.ndarray, b: np.ndarray):
    """Intersection and union areas of ``(N, 4)`` and ``(M, 4)`` XYXY boxes, each ``(N, M)``."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    return inter, area_a[:, None] + area_b[None, :] - inter


def _iou(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``(N, 4)`` and ``(M, 4)`` XYXY boxes, ``(N, M)`` (no +1, as MDETR's evaluators)."""
    return _iou(*_inter_union(a, b))


def generalized_box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """GIoU (Rezatofighi et al. 2019) of ``(N, 4)`` and ``(M, 4)`` XYXY boxes, ``(N, M)``: the IoU
    minus the part of the enclosing box the union leaves empty; never above the IoU."""
    inter, union = _inter_union(a, b)
    lo, hi = np.minimum(a[:, None, :2], b[None, :, :2]), np.maximum(a[:, None, 2:], b[None, :, 2:])
    hull = (hi - lo).prod(-1)
    iou = _iou(inter, union)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(hull > 0, iou - (hull - union) / hull, iou)


def hits_at_k(predicted: np.ndarray, targets: np.ndarray, topk: Sequence[int], thresh: float,
              overlap: str = "iou"):
    """``{k: whether one of the first k predicted boxes overlaps a target by >= thresh}``;
    k = -1: any of the predicted boxes (official GLIP's / MDETR's "upper bound").

    Args:
        overlap: "iou", or "giou" (the generalized IoU MDETR's and official GLIP's RefCOCO
            evaluators use).
    """
    if overlap not in ("iou", "giou"):
        raise ValueError(f"overlap must be 'iou' or 'giou', got {overlap!r}.")
    if len(predicted) == 0 or len(targets) == 0:
        return {k: False for k in topk}
    measure = box_iou if overlap == "iou" else generalized_box_iou
    best = measure(predicted, targets).max(1)  # per predicted box, its best target
    return {k: bool((best[: None if k == -1 else k] >= thresh).any()) for k in topk}
