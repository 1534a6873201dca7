"""One-stage instance segmentation for GLIP (GLIPv2 adds masks to the one-stage model): RoIAlign
on the fusion tower's output levels at the boxes (ground-truth boxes in training, the ATSS
detections at test time), then Detectron2's class-agnostic Mask R-CNN conv-upsample head and
its mask loss / inference, so `pred_masks` come out as Detectron2's evaluators expect."""
from typing import List, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.mask_head import (
    MaskRCNNConvUpsampleHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detectron2.structures import Instances
from torch import nn

from .anchors import tower_level_strides
from .losses import check_loss_weight

# Norms that cannot take an empty batch, which this head gets whenever a batch (or one GPU's share
# of it) has no masked box: Detectron2's Conv2d refuses nn.SyncBatchNorm ("SyncBN", "nnSyncBN") on
# empty input, and "naiveSyncBN" asserts a non-empty batch under DDP.
_NO_EMPTY_BATCH_NORMS = ("SyncBN", "nnSyncBN", "naiveSyncBN")


class GLIPMaskHead(nn.Module):
    """Per-box masks from the fused FPN levels.

    Args:
        channels: width of the tower output (MODEL.DYHEAD.CHANNELS).
        strides: strides of the levels used (the first len(strides) tower outputs; powers of 2).
        resolution: RoIAlign output side (the mask is predicted at twice that).
        sampling_ratio, pooler_type: as Detectron2's ROIPooler.
        num_conv, conv_dim, norm: the conv stack of MaskRCNNConvUpsampleHead.
        loss_weight: weight of the per-pixel binary cross-entropy.

    Raises:
        ValueError: for a norm that fails on an empty batch ("SyncBN", "nnSyncBN",
            "naiveSyncBN"; before: an AssertionError at the first batch without masked boxes,
            possibly hours into training); "naiveSyncBN_N" synchronises the statistics and takes
            empty batches. A loss_weight that is negative or not finite.
    """

    @configurable
    def __init__(
        self,
        *,
        channels: int,
        strides: Sequence[int] = (8, 16, 32),
        resolution: int = 14,
        sampling_ratio: int = 0,
        pooler_type: str = "ROIAlignV2",
        num_conv: int = 4,
        conv_dim: int = 256,
        norm: str = "",
        loss_weight: float = 1.0,
    ):
        super().__init__()
        if isinstance(norm, str) and norm in _NO_EMPTY_BATCH_NORMS:
            raise ValueError(
                f"MODEL.ROI_MASK_HEAD.NORM {norm!r} fails on the empty batches the one-stage mask "
                "head gets (a batch, or one GPU's share of it, without masked boxes: box-only "
                "images, boxes all cropped away). Use 'naiveSyncBN_N' (statistics synchronised "
                "over the GPUs, empty batches allowed), 'GN' or 'BN'."
            )
        check_loss_weight(
            "MODEL.GLIP.MASK_LOSS_WEIGHT", loss_weight,
            "it multiplies the mask loss (a negative weight would push the masks away from the "
            "ground truth); set MODEL.MASK_ON False to drop the mask head.",
        )
        self.num_levels = len(strides)
        self.pooler = ROIPooler(
            output_size=resolution,
            scales=[1.0 / s for s in strides],
            sampling_ratio=sampling_ratio,
            pooler_type=pooler_type,
        )
        # one class: GLIP's classes are prompt phrases, so masks are class-agnostic
        self.predictor = MaskRCNNConvUpsampleHead(
            ShapeSpec(channels=channels, height=resolution, width=resolution),
            num_classes=1,
            conv_dims=[conv_dim] * (num_conv + 1),
            conv_norm=norm,
        )
        self.loss_weight = loss_weight

    @classmethod
    def from_config(cls, cfg):
        m = cfg.MODEL.ROI_MASK_HEAD
        return dict(
            channels=cfg.MODEL.DYHEAD.CHANNELS,
            strides=tower_level_strides(cfg, cfg.MODEL.GLIP.MASK_LEVELS, "MODEL.GLIP.MASK_LEVELS"),
            resolution=m.POOLER_RESOLUTION,
            sampling_ratio=m.POOLER_SAMPLING_RATIO,
            pooler_type=m.POOLER_TYPE,
            num_conv=m.NUM_CONV,
            conv_dim=m.CONV_DIM,
            norm=m.NORM,
            loss_weight=cfg.MODEL.GLIP.MASK_LOSS_WEIGHT,
        )

    def mask_logits(self, features: List[torch.Tensor], boxes) -> torch.Tensor:
        """features: tower levels, each (B, C, H, W); boxes: B `Boxes` in input pixels.
        Returns (sum of boxes, 1, 2*resolution, 2*resolution) logits."""
        x = self.pooler([f.float() for f in features[: self.num_levels]], boxes)
        return self.predictor.layers(x)

    def losses(self, features: List[torch.Tensor], instances: List[Instances]):
        """Mask loss at the ground-truth boxes of the images that have gt_masks (the others, e.g.
        box-only grounding data in a mixed batch, are left out; none: a zero loss).

        Args:
            instances: per image, with gt_boxes and (optionally) gt_masks.
        """
        props = []
        for inst in instances:
            p = Instances(inst.image_size)
            p.proposal_boxes = inst.gt_boxes if inst.has("gt_masks") else inst.gt_boxes[:0]
            if inst.has("gt_masks"):
                p.gt_masks = inst.gt_masks
            props.append(p)
        logits = self.mask_logits(features, [p.proposal_boxes for p in props])
        if logits.shape[0] == 0:
            return {"loss_mask": logits.sum() * 0.0 + sum(q.sum() for q in self.parameters()) * 0.0}
        return {"loss_mask": self.loss_weight * mask_rcnn_loss(logits, [p for p in props if len(p)])}

    def predict(self, features: List[torch.Tensor], instances: List[Instances]) -> None:
        """Set `pred_masks` (N, 1, 2R, 2R) probabilities on each image's detections, in place."""
        logits = self.mask_logits(features, [i.pred_boxes for i in instances])
        mask_rcnn_inference(logits, instances)
