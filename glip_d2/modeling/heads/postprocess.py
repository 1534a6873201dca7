"""Test-time selection of GLIP detections (official ATSS post-processing with token scores)."""
from typing import List, Tuple

import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision.nms)

from ...text import aggregate_token_scores
from . import box_coder

# Up to this many boxes, class_wise_nms runs one NMS over label-shifted boxes (torchvision's
# batched_nms switches at the same sizes); above, one NMS per label.
_SHIFTED_NMS_MAX_CPU, _SHIFTED_NMS_MAX = 1000, 5000


# MODEL.ATSS.SCORE_AGG values: the mean (official), max, min or geometric mean of a label's token
# probabilities, or the sigmoid of the mean of its token logits (what MODEL.ATSS.PHRASE_LOSS_WEIGHT
# trains).
PROBABILITY_AGGREGATIONS = ("MEAN", "MAX", "MIN", "GEO_MEAN")
SCORE_AGGREGATIONS = PROBABILITY_AGGREGATIONS + ("MEAN_LOGIT",)


def label_scores(token_probs: torch.Tensor, positive_map: torch.Tensor, mode: str = "MEAN") -> torch.Tensor:
    """(N, T) token probabilities and (L, T') bool label->token map -> (N, L) label scores.
    A label with no token scores 0 (a chunk's map may hold labels cut off by the token limit)."""
    if mode.upper() not in PROBABILITY_AGGREGATIONS:
        raise ValueError(f"Unknown score aggregation {mode!r}; use one of {SCORE_AGGREGATIONS}.")
    return aggregate_token_scores(token_probs, positive_map, mode, empty_label="zero")


def label_scores_from_logits(token_logits: torch.Tensor, positive_map: torch.Tensor, mode: str = "MEAN"):
    """(N, T) token logits and (L, T') bool label->token map -> (N, L) label scores in [0, 1].
    A label with no token among the T scores 0 in every mode (MEAN_LOGIT too: sigmoid of its
    empty mean, 0.5, would pass the score threshold at every location)."""
    if mode.upper() == "MEAN_LOGIT":
        scores = aggregate_token_scores(token_logits, positive_map, "mean", empty_label="zero").sigmoid()
        scored = positive_map[:, : token_logits.shape[-1]].to(scores.device).any(dim=1)  # (L,)
        return scores.masked_fill(~scored, 0.0)
    return label_scores(token_logits.sigmoid(), positive_map, mode)


def class_wise_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, thresh: float):
    """NMS within each label with the official +1 IoU convention; kept indices, ascending.

    Each label's boxes are suppressed only by boxes of their label, as in the official
    class-aware kernel (ml_nms). A few thousand boxes go through one NMS with each label's boxes
    shifted by ``label x (max coordinate + 1)`` (torchvision's ``batched_nms`` trick), in float64:
    in float32 the shift rounds the coordinates of a high label id (by up to 1/16 px at LVIS
    label 1200 of an 800x1333 input: about 1% of the kept boxes changed), while float64 holds
    every float32 coordinate plus the shift exactly. More boxes (LVIS: the prompt chunks' merged
    candidates) run one NMS per label, grouped by one sort instead of a pass over all boxes per
    label.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    plus1 = boxes.float() + boxes.new_tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float32)
    if len(boxes) <= (_SHIFTED_NMS_MAX_CPU if boxes.device.type == "cpu" else _SHIFTED_NMS_MAX):
        shift = labels.to(torch.float64) * (plus1.max().double() + 1)
        shifted = plus1.double() + shift[:, None]
        return torch.ops.torchvision.nms(shifted, scores.double(), thresh).sort()[0]
    order = labels.argsort(stable=True)  # grouped by label, ascending index within a label
    counts = torch.unique_consecutive(labels[order], return_counts=True)[1].tolist()
    keep, start = [], 0
    groups = zip(plus1[order].split(counts), scores[order].float().split(counts))
    for group_boxes, group_scores in groups:
        if len(group_scores) == 1:
            keep.append(order.new_full((1,), start))
        else:  # the op itself: the nms() wrapper's per-call logging outweighs a small group
            keep.append(torch.ops.torchvision.nms(group_boxes, group_scores, thresh) + start)
        start += len(group_scores)
    return order[torch.cat(keep)].sort()[0]


def select_detections(
    box_regression: List[torch.Tensor],
    centerness: List[torch.Tensor],
    token_logits: List[torch.Tensor],
    anchors: List[torch.Tensor],
    positive_maps: List[torch.Tensor],
    image_sizes: List[Tuple[int, int]],
    *,
    score_thresh: float = 0.05,
    pre_nms_top_n: int = 1000,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    score_agg: str = "MEAN",
    apply_nms: bool = True,
):
    """Pick detections per image.

    Args:
        box_regression: per level (B, 4, H, W). centerness: per level (B, 1, H, W).
        token_logits: per level (B, H*W, T). anchors: per level (H*W, 4).
        positive_maps: per image (L, T) bool label->token maps.
        image_sizes: per image (h, w) of the (unpadded) network input.
    Returns:
        per image a dict with boxes (official xyxy, clipped to w-1/h-1), scores (sqrt of
        prob x centerness), labels (0-based), anchor_index (global over levels).
    """
    results = []
    offsets = [0]
    for a in anchors[:-1]:
        offsets.append(offsets[-1] + a.shape[0])
    for i, (h, w) in enumerate(image_sizes):
        per_level = []
        # all levels' locations scored at once: the label->token index is built once per image
        all_probs = label_scores_from_logits(
            torch.cat([logit[i] for logit in token_logits]), positive_maps[i], score_agg
        )  # (sum of HW, L)
        level_probs = all_probs.split([a.shape[0] for a in anchors])
        for lvl, (reg, ctr, probs, anc) in enumerate(zip(box_regression, centerness, level_probs, anchors)):
            cand = probs > score_thresh
            ctr_p = ctr[i].permute(1, 2, 0).reshape(-1).sigmoid()
            scored = probs * ctr_p[:, None]
            vals = scored[cand]
            k = min(int(cand.sum()), pre_nms_top_n)
            vals, top = vals.topk(k, sorted=False)
            loc_lab = cand.nonzero()[top]
            loc, lab = loc_lab[:, 0], loc_lab[:, 1]
            deltas = reg[i].permute(1, 2, 0).reshape(-1, 4)[loc]
            boxes = box_coder.decode(deltas, anc[loc])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=w - 1)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=h - 1)
            per_level.append((boxes, vals.sqrt(), lab, loc + offsets[lvl]))
        boxes, scores, labels, anchor_idx = (torch.cat(t) for t in zip(*per_level))
        if apply_nms:
            keep = class_wise_nms(boxes, scores, labels, nms_thresh)
            boxes, scores, labels, anchor_idx = boxes[keep], scores[keep], labels[keep], anchor_idx[keep]
            n = scores.numel()
            if n > detections_per_img > 0:
                kth = torch.kthvalue(scores.detach().cpu().float(), n - detections_per_img + 1)[0]
                keep = (scores >= kth.item()).nonzero().squeeze(1)
                boxes, scores, labels, anchor_idx = boxes[keep], scores[keep], labels[keep], anchor_idx[keep]
        results.append(dict(boxes=boxes, scores=scores, labels=labels, anchor_index=anchor_idx))
    return results
