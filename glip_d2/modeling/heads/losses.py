"""GLIP's ATSS losses: token-level sigmoid focal loss, centerness-weighted GIoU, centerness BCE;
and the check every configured loss weight passes."""

import math

import torch
import torch.distributed as dist
from detectron2.utils import comm
from torchvision.ops import sigmoid_focal_loss

from . import box_coder


def check_loss_weight(key: str, value: float, what_it_does: str) -> None:
    """A loss weight must be a finite number >= 0: a negative or NaN one turned its loss off
    silently or trained away from the ground truth, and inf made every loss inf.

    Args:
        key: the config key, for the message.
        value: its value.
        what_it_does: the rest of the message (what the weight multiplies, how to turn it off).

    Raises:
        ValueError: "<key> <value> is not a finite number >= 0: <what_it_does>".
    """
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{key} {value} is not a finite number >= 0: {what_it_does}")


def reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the DDP processes (a copy; ``x`` itself with one process). Every process
    must call it: the loss normalisers (GLIP's ``num_pos_avg``) of the one-stage head and the ROI
    box predictor.
    """
    if comm.get_world_size() > 1 and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
    return x


def token_sigmoid_focal_loss(logits, targets, text_mask, alpha: float = 0.25, gamma: float = 2.0):
    """Sum of binary focal losses over real tokens.

    The per-element loss is torchvision's ``sigmoid_focal_loss``, which computes the official
    GLIP formula operation for operation (BCE-with-logits x (1 - p_t)^gamma x alpha_t): the loss
    and its gradient are bit-equal to the hand-written form it replaced
    (``tests/modeling/test_library_equivalence.py``).

    Args:
        logits, targets: (B, A, T); targets binary. text_mask: (B, T), 1 = real token.
    """
    keep = (text_mask > 0)[:, None, :].expand_as(logits)
    x, t = logits[keep], targets[keep].to(logits.dtype)
    return sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="sum")


def phrase_sigmoid_focal_loss(logits, token_targets, phrase_maps, alpha: float = 0.25, gamma: float = 2.0):
    """Sum of binary focal losses over (anchor, phrase) pairs: a phrase's logit is the mean of its
    tokens' logits, and its target is 1 where every token of the phrase is a target token.

    Unlike the token-level loss, a token shared by several phrases of the prompt ("red" in "red
    circle" and "red square") gets no conflicting targets: "red square" as a whole is the
    negative of a red circle, and the score of a phrase moves with what tells it from the others.

    Args:
        logits, token_targets: (B, A, T). phrase_maps: per image a (P, T') bool map of the
            prompt's phrases (rows with no token are ignored).
    """
    total = logits.sum() * 0.0
    num_tokens = logits.shape[-1]
    for logit, target, pmap in zip(logits, token_targets, phrase_maps):
        pm = pmap[:, :num_tokens].to(logit.dtype)
        pm = pm[pm.sum(1) > 0]
        if len(pm) == 0:
            continue
        length = pm.sum(1)
        phrase_logits = logit @ (pm / length[:, None]).t()  # (A, P)
        phrase_targets = (target.to(logit.dtype) @ pm.t()) >= length - 0.5
        total = total + sigmoid_focal_loss(
            phrase_logits, phrase_targets.to(logit.dtype), alpha=alpha, gamma=gamma, reduction="sum"
        )
    return total


def token_softmax_loss(logits, targets, text_mask):
    """Sum over anchors with a target of the cross-entropy between the softmax of the anchor's
    logits over the real tokens and the uniform distribution over its target tokens.

    Unlike the per-token sigmoid loss, a score shared by every token (an "object here" term)
    cancels in the softmax, so this loss only rewards telling the named tokens from the others.

    Args:
        logits, targets: (B, A, T); targets binary. text_mask: (B, T), 1 = real token.
    """
    has_target = targets.any(dim=-1)  # (B, A)
    if not has_target.any():
        return logits.sum() * 0.0
    real = (text_mask > 0)[:, None, :].expand_as(logits)[has_target]  # (P, T)
    x = logits[has_target].masked_fill(~real, float("-inf"))
    t = targets[has_target].to(x.dtype)
    log_p = torch.log_softmax(x, dim=-1).masked_fill(~real, 0.0)
    return -((t * log_p).sum(-1) / t.sum(-1)).sum()


def centerness_targets(gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) of anchor centres inside their boxes."""
    cx = (anchors[:, 2] + anchors[:, 0]) / 2
    cy = (anchors[:, 3] + anchors[:, 1]) / 2
    lr = torch.stack([cx - gt_boxes[:, 0], gt_boxes[:, 2] - cx], dim=1)
    tb = torch.stack([cy - gt_boxes[:, 1], gt_boxes[:, 3] - cy], dim=1)
    return torch.sqrt(
        (lr.min(dim=1)[0] / lr.max(dim=1)[0]) * (tb.min(dim=1)[0] / tb.max(dim=1)[0])
    )


def giou_loss(pred_deltas, target_deltas, anchors, weight):
    """Sum over positives of weight * (1 - GIoU) between decoded boxes (official convention).

    Kept hand-written rather than ``torchvision.ops.generalized_box_iou_loss``: the official loss
    adds 1e-7 to both the enclosing area and the union before subtracting them, torchvision
    subtracts the raw areas. Measured on random boxes, the two are bit-equal once the areas are
    above ~100 px^2 (every GLIP anchor is >= 64 px wide), but for boxes of a few pixels (tiny
    ground-truth boxes exist in LVIS and COCO) up to 21 % of them differ, by up to 2.4e-7, so the
    library loss would not be bit-equal to the official one (pinned by
    ``tests/modeling/test_library_equivalence.py``).
    """
    p = box_coder.decode(pred_deltas, anchors)
    g = box_coder.decode(target_deltas, anchors)
    px1, py1 = p[:, 0], p[:, 1]
    px2, py2 = torch.max(p[:, 0], p[:, 2]), torch.max(p[:, 1], p[:, 3])
    p_area = (px2 - px1) * (py2 - py1)
    g_area = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    iw = (torch.min(px2, g[:, 2]) - torch.max(px1, g[:, 0])).clamp(min=0)
    ih = (torch.min(py2, g[:, 3]) - torch.max(py1, g[:, 1])).clamp(min=0)
    inter = iw * ih
    enclose = (torch.max(px2, g[:, 2]) - torch.min(px1, g[:, 0])) * (
        torch.max(py2, g[:, 3]) - torch.min(py1, g[:, 1])
    ) + 1e-7
    union = p_area + g_area - inter + 1e-7
    giou = inter / union - (enclose - union) / enclose
    return ((1 - giou) * weight).sum()
