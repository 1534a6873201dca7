"""Language-aware versions of Detectron2's StandardROIHeads and CascadeROIHeads.

Everything but classification is Detectron2's: proposal sampling, box pooling and box head,
cascade stages, the (class-agnostic) mask head. Classification scores regions against text
(`LanguageAwareBoxPredictor`), so one model detects any vocabulary.

Two conventions differ from the stock heads:

* `forward(images, features, proposals, targets=None, *, text)` takes the encoded prompts
  (`RegionTextInputs`); `LanguageAwareRCNN` supplies them.
* Internally a proposal's `gt_classes` is the index of its matched GT box (`num_classes` is
  `BACKGROUND_INDEX`); the GT's `gt_positive_map` says which tokens name it. The targets passed
  in are not modified.
"""

from typing import Dict, List, Optional

import torch
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.cascade_rcnn import CascadeROIHeads, _ScaleGradient
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import ImageList, Instances
from detectron2.utils.events import get_event_storage

from .box_predictor import BACKGROUND_INDEX, LanguageAwareBoxPredictor
from .text_inputs import RegionTextInputs

__all__ = ["LanguageAwareStandardROIHeads", "LanguageAwareCascadeROIHeads"]


def _indexed_targets(targets: List[Instances]) -> List[Instances]:
    """Shallow copies whose gt_classes are 0..G-1 (the GT index)."""
    out = []
    for t in targets:
        if not t.has("gt_positive_map"):
            raise ValueError(
                "Language-aware ROI heads need instances.gt_positive_map (which tokens of the "
                "caption name each box); use glip_d2.data.GroundingDatasetMapper."
            )
        c = Instances(t.image_size, **t.get_fields())
        c.gt_classes = torch.arange(len(t), device=t.gt_boxes.device)
        out.append(c)
    return out


class _LanguageAwareMixin:
    """Shared by both heads: config surgery, the `text` argument, target indexing."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        if cfg.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES:
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES is not supported by the language-aware "
                "ROI heads; set it False."
            )
        if cfg.MODEL.KEYPOINT_ON:
            raise ValueError("Language-aware ROI heads predict boxes and masks, not keypoints.")
        if not cfg.MODEL.ROI_BOX_HEAD.NAME:
            # Detectron2's C4 configs leave it empty: their Res5ROIHeads runs res5 as the box head
            raise ValueError(
                f"{cls.__name__} needs a box head, and MODEL.ROI_BOX_HEAD.NAME is empty (as in "
                "Detectron2's C4 configs, whose Res5ROIHeads has no language-aware version); "
                "set it, e.g. MODEL.ROI_BOX_HEAD.NAME 'FastRCNNConvFCHead' with "
                "MODEL.ROI_BOX_HEAD.NUM_FC 2."
            )
        ret = super().from_config(cfg, input_shape)
        ret["num_classes"] = BACKGROUND_INDEX
        return ret

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        # A vocabulary-free model cannot have one mask channel per class.
        if cfg.MODEL.MASK_ON and not cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = True
        return super()._init_mask_head(cfg, input_shape)

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
        *,
        text: Optional[RegionTextInputs] = None,
    ):
        """Like `StandardROIHeads.forward`, with the prompts each image is scored against.

        Returns:
            training: (sampled proposals, losses); inference: (instances with `pred_classes`
            indexing each image's label space, {}).
        """
        del images
        if text is None:
            raise ValueError(
                f"{type(self).__name__} scores regions against text and needs text="
                "RegionTextInputs(...); use META_ARCHITECTURE 'LanguageAwareRCNN'."
            )
        text.check(len(proposals), self.training)
        if self.training:
            if targets is None:
                raise ValueError("Training needs targets (instances with gt_positive_map).")
            targets = _indexed_targets(targets)
            proposals = self.label_and_sample_proposals(proposals, targets)
            losses = self._forward_box(features, proposals, targets, text)
            losses.update(self._forward_mask(features, proposals))
            return proposals, losses
        pred_instances = self._forward_box(features, proposals, None, text)
        pred_instances = self.forward_with_given_boxes(features, pred_instances)
        return pred_instances, {}


@ROI_HEADS_REGISTRY.register()
class LanguageAwareStandardROIHeads(_LanguageAwareMixin, StandardROIHeads):
    """`StandardROIHeads` (FPN box head + optional class-agnostic mask head) classifying regions
    by their similarity to the prompt's tokens or phrases."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = LanguageAwareBoxPredictor(cfg, ret["box_head"].output_shape)
        return ret

    def _forward_box(self, features, proposals, targets, text):
        features = [features[f] for f in self.box_in_features]
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        box_features = self.box_head(box_features)
        predictions = self.box_predictor(box_features)
        if self.training:
            return self.box_predictor.losses(predictions, proposals, text)
        pred_instances, _ = self.box_predictor.inference(predictions, proposals, text)
        return pred_instances


@ROI_HEADS_REGISTRY.register()
class LanguageAwareCascadeROIHeads(_LanguageAwareMixin, CascadeROIHeads):
    """`CascadeROIHeads` with a language-aware predictor per stage; test scores are the mean of
    the stages' label scores, boxes those of the last stage (as in Detectron2)."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        weights = cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
        ret["box_predictors"] = [
            LanguageAwareBoxPredictor(
                cfg, head.output_shape, box2box_transform=Box2BoxTransform(weights=w)
            )
            for head, w in zip(ret["box_heads"], weights)
        ]
        return ret

    def _run_stage(self, features, proposals, stage):
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        if self.training:
            # Sum of the stages' losses, with the features' gradient scaled down (Detectron2).
            box_features = _ScaleGradient.apply(box_features, 1.0 / self.num_cascade_stages)
        box_features = self.box_head[stage](box_features)
        return self.box_predictor[stage](box_features)

    def _forward_box(self, features, proposals, targets, text):
        features = [features[f] for f in self.box_in_features]
        head_outputs = []  # (predictor, predictions, proposals)
        prev_pred_boxes = None
        image_sizes = [x.image_size for x in proposals]
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals = self._create_proposals_from_boxes(prev_pred_boxes, image_sizes)
                if self.training:
                    proposals = self._match_and_label_boxes(proposals, k, targets)
            predictions = self._run_stage(features, proposals, k)
            prev_pred_boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            head_outputs.append((self.box_predictor[k], predictions, proposals))

        if self.training:
            losses = {}
            storage = get_event_storage()
            for stage, (predictor, predictions, props) in enumerate(head_outputs):
                with storage.name_scope(f"stage{stage}"):
                    stage_losses = predictor.losses(predictions, props, text)
                losses.update({f"{k}_stage{stage}": v for k, v in stage_losses.items()})
            return losses
        scores_per_stage = [h[0].predict_probs(h[1], h[2], text) for h in head_outputs]
        scores = [sum(s) / self.num_cascade_stages for s in zip(*scores_per_stage)]
        predictor, predictions, props = head_outputs[-1]
        boxes = predictor.predict_boxes(predictions, props)
        pred_instances, _ = fast_rcnn_inference(
            boxes,
            scores,
            image_sizes,
            predictor.test_score_thresh,
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
        )
        return pred_instances
