"""Box predictor whose class scores are region-text similarities (`RegionWordScorer`).

Two ways to classify a region, chosen by MODEL.LANGUAGE_ROI_HEADS.CLS_LOSS:

* **tokens** ("focal" / "bce", GLIP): a logit per (region, token) of the prompt; a foreground
  region's targets are the tokens naming its GT box, a background region's are all zero (the
  scorer's bias0 plays the background). The focal loss is normalised by the foreground regions
  counted over all DDP processes (as GLIP's), so N processes train as one on their whole batch.
  At test time a label's score is the mean (or max) of its tokens' probabilities, exactly like
  the one-stage GLIP head.
* **phrases** ("softmax", RegionCLIP / Detic): a label is embedded as the mean feature of its
  tokens; a region gets a softmax over the labels plus a learned background embedding. In
  training the labels are the distinct GT phrases of the whole batch (identified by their token
  ids), so other images' phrases are the negatives; at test time, all vocabulary names.

Regression is class-agnostic (one box per region whatever the text says).
"""

import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.box_regression import Box2BoxTransform, _dense_box_regression_loss
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Instances
from detectron2.utils import comm
from torch import nn

from ...text import aggregate_token_scores
from ..heads.losses import reduce_sum, token_sigmoid_focal_loss
from ..heads.postprocess import PROBABILITY_AGGREGATIONS
from ..heads.region_word import RegionWordScorer
from .text_inputs import EncodedPrompt, RegionTextInputs

__all__ = ["BACKGROUND_INDEX", "CLS_LOSSES", "LanguageAwareBoxPredictor"]

# Inside the language-aware ROI heads a proposal's `gt_classes` is the index of its matched GT box
# in the image (the class is whatever the GT's tokens say); this marks background. It is the
# heads' `num_classes`, so Detectron2's sampling and mask-head code treat it as background.
BACKGROUND_INDEX = 1 << 30

CLS_LOSSES = ("focal", "bce", "softmax")


def _fit_width(pmap: torch.Tensor, width: int) -> torch.Tensor:
    """(G, W) map cut or zero-padded to (G, width)."""
    if pmap.shape[1] >= width:
        return pmap[:, :width]
    return F.pad(pmap, (0, width - pmap.shape[1]))


def _mean_token_features(label_map: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(L, T) map, (T, D) tokens -> (L, D) mean feature of each label's tokens."""
    m = label_map[:, : tokens.shape[0]].to(tokens.dtype)
    counts = m.sum(1, keepdim=True)
    if (counts == 0).any():
        empty = (counts[:, 0] == 0).nonzero().flatten().tolist()
        raise ValueError(
            f"Labels {empty} have no token in the prompt (cut off by MAX_QUERY_LEN?); every "
            "label needs at least one token."
        )
    return (m @ tokens) / counts


class LanguageAwareBoxPredictor(nn.Module):
    """Region embedding + class-agnostic box deltas; scoring against text happens in `losses`,
    `predict_probs` and `inference`, which take the `RegionTextInputs`."""

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        language_dim: int,
        box2box_transform: Box2BoxTransform,
        embed_dim: int = 256,
        cls_loss: str = "focal",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        prior_prob: float = 0.01,
        log_scale: float = 0.0,
        clamp_dot_product: bool = True,
        score_agg: str = "MEAN",
        test_score_thresh: float = 0.05,
        test_nms_thresh: float = 0.5,
        test_topk_per_image: int = 100,
        smooth_l1_beta: float = 0.0,
        box_reg_loss_type: str = "smooth_l1",
        cls_loss_weight: float = 1.0,
        box_loss_weight: float = 1.0,
    ):
        """
        Args:
            input_shape: shape of the box head's output.
            language_dim: width D of the token features.
            box2box_transform: decodes the class-agnostic deltas.
            embed_dim: width of the region embedding that is scored against the tokens.
            cls_loss: "focal", "bce" (per token, sigmoid) or "softmax" (per label).
            focal_alpha, focal_gamma: focal loss parameters.
            prior_prob, log_scale, clamp_dot_product: `RegionWordScorer` initialisation.
            score_agg: "MEAN", "MAX", "MIN" or "GEO_MEAN" token -> label aggregation (sigmoid
                losses; `glip_d2.text.aggregate_token_scores`).
            test_score_thresh, test_nms_thresh, test_topk_per_image: as in `FastRCNNOutputLayers`.
            smooth_l1_beta, box_reg_loss_type: box regression loss.
            cls_loss_weight, box_loss_weight: loss weights.
        """
        super().__init__()
        cls_loss = cls_loss.lower()
        if cls_loss not in CLS_LOSSES:
            raise ValueError(
                f"MODEL.LANGUAGE_ROI_HEADS.CLS_LOSS={cls_loss!r} is not one of {CLS_LOSSES}."
            )
        if isinstance(input_shape, int):
            input_shape = ShapeSpec(channels=input_shape)
        input_size = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        self.region_proj = nn.Linear(input_size, embed_dim)
        # The box head's output has no normalisation (GLIP's dense head scores GroupNorm'd tower
        # features); without this the region-word logits blow up early in training.
        self.region_norm = nn.LayerNorm(embed_dim)
        self.bbox_pred = nn.Linear(input_size, 4)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.region_proj, self.bbox_pred):
            nn.init.constant_(layer.bias, 0)
        self.scorer = RegionWordScorer(
            embed_dim, language_dim, prior_prob, log_scale, clamp_dot_product
        )
        self.cls_loss = cls_loss
        if cls_loss == "softmax":
            # Scored like any label embedding; normalised inside the scorer, so its scale is free.
            self.background = nn.Parameter(torch.randn(language_dim) / math.sqrt(language_dim))
        self.box2box_transform = box2box_transform
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        if score_agg.upper() not in PROBABILITY_AGGREGATIONS:  # else: an error at the first test
            raise ValueError(
                f"MODEL.LANGUAGE_ROI_HEADS.SCORE_AGG {score_agg!r} is not one of "
                f"{PROBABILITY_AGGREGATIONS}."
            )
        self.score_agg = score_agg
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        self.test_topk_per_image = test_topk_per_image
        self.smooth_l1_beta = smooth_l1_beta
        self.box_reg_loss_type = box_reg_loss_type
        self.loss_weight = {"loss_cls": cls_loss_weight, "loss_box_reg": box_loss_weight}

    @classmethod
    def from_config(cls, cfg, input_shape, box2box_transform=None):
        h = cfg.MODEL.LANGUAGE_ROI_HEADS
        return {
            "input_shape": input_shape,
            "language_dim": cfg.MODEL.LANGUAGE_BACKBONE.LANG_DIM,
            "box2box_transform": box2box_transform
            or Box2BoxTransform(weights=cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS),
            "embed_dim": h.EMBED_DIM,
            "cls_loss": h.CLS_LOSS,
            "focal_alpha": h.FOCAL_ALPHA,
            "focal_gamma": h.FOCAL_GAMMA,
            "prior_prob": h.PRIOR_PROB,
            "log_scale": h.LOG_SCALE,
            "clamp_dot_product": h.CLAMP_DOT_PRODUCT,
            "score_agg": h.SCORE_AGG,
            "test_score_thresh": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
            "test_nms_thresh": cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "smooth_l1_beta": cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA,
            "box_reg_loss_type": cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE,
            "cls_loss_weight": h.CLS_LOSS_WEIGHT,
            "box_loss_weight": cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT,
        }

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(R, ...) box-head features -> ((R, embed_dim) region embeddings, (R, 4) deltas)."""
        x = x.flatten(1)
        return self.region_norm(self.region_proj(x)), self.bbox_pred(x)

    # ------------------------------------------------------------------ scoring
    def token_logits(self, regions: torch.Tensor, prompt: EncodedPrompt) -> torch.Tensor:
        """(R, E) regions vs one prompt -> (R, T) region-token logits."""
        return self.scorer(regions[None], prompt.tokens[None].to(regions.dtype))[0]

    def label_logits(self, regions: torch.Tensor, label_embeddings: torch.Tensor) -> torch.Tensor:
        """(R, E) regions vs (L, D) label embeddings -> (R, L + 1) logits, background last."""
        labels = torch.cat(
            [label_embeddings.to(regions.dtype), self.background[None].to(regions.dtype)]
        )
        return self.scorer(regions[None], labels[None])[0]

    # ------------------------------------------------------------------ training
    def losses(
        self, predictions, proposals: List[Instances], text: RegionTextInputs
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            predictions: output of `forward`.
            proposals: sampled proposals with `gt_classes` (index of the matched GT box in its
                image, or `BACKGROUND_INDEX`), `proposal_boxes` and, for images with GT, `gt_boxes`.
            text: the batch's captions and GT positive maps.
        Returns:
            {"loss_cls", "loss_box_reg"}, weighted.
        """
        regions, deltas = predictions
        gt_index = (
            cat([p.gt_classes for p in proposals], dim=0)
            if proposals
            else regions.new_zeros(0, dtype=torch.long)
        )
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        gt_boxes = cat(
            [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals],
            dim=0,
        )
        fg = (gt_index >= 0) & (gt_index < BACKGROUND_INDEX)
        num_per_image = [len(p) for p in proposals]
        if self.cls_loss == "softmax":
            loss_cls = self._phrase_softmax_loss(regions, gt_index, fg, num_per_image, text)
        else:
            loss_cls = self._token_sigmoid_loss(regions, gt_index, fg, num_per_image, text)
        loss_box = _dense_box_regression_loss(
            [proposal_boxes[fg]],
            self.box2box_transform,
            [deltas[fg].unsqueeze(0)],
            [gt_boxes[fg]],
            ...,
            self.box_reg_loss_type,
            self.smooth_l1_beta,
        ) / max(gt_index.numel(), 1.0)
        # Keeps every parameter in the graph when a batch has no proposal (DDP).
        loss_box = loss_box + 0.0 * deltas.sum()
        losses = {"loss_cls": loss_cls, "loss_box_reg": loss_box}
        return {k: v * self.loss_weight[k] for k, v in losses.items()}

    def _token_sigmoid_loss(self, regions, gt_index, fg, num_per_image, text):
        total = regions.sum() * 0.0
        for i, (emb, idx, is_fg) in enumerate(
            zip(
                regions.split(num_per_image), gt_index.split(num_per_image), fg.split(num_per_image)
            )
        ):
            prompt = text.prompts[i][0]
            logits = self.token_logits(emb, prompt).float()  # (R_i, T)
            pmap = _fit_width(text.gt_positive_maps[i].to(logits.device), logits.shape[1]).bool()
            targets = torch.zeros_like(logits, dtype=torch.bool)
            targets[is_fg] = pmap[idx[is_fg]]
            if self.cls_loss == "focal":
                total = total + token_sigmoid_focal_loss(
                    logits[None],
                    targets[None],
                    prompt.mask[None],
                    self.focal_alpha,
                    self.focal_gamma,
                )
            else:
                keep = (prompt.mask > 0)[None, :].expand_as(logits)
                total = total + F.binary_cross_entropy_with_logits(
                    logits[keep], targets[keep].float(), reduction="sum"
                )
        if self.cls_loss == "focal":  # GLIP: by the positives, averaged over the processes
            # GLIP's num_pos_avg: DDP's averaged gradient is then one process's on the whole batch
            num_pos = reduce_sum(fg.sum().float().reshape(1)).item() / comm.get_world_size()
            return total / max(num_pos, 1.0)
        return total / max(regions.shape[0], 1)  # Detic: per region

    def batch_phrases(self, text: RegionTextInputs) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The distinct GT phrases of a batch, identified by their token ids.

        Returns:
            (K, D) embedding of each phrase (mean over its occurrences of the mean token
            feature) and, per image, (G_i,) long: the phrase of each GT box.
        """
        keys: Dict[Tuple[int, ...], int] = {}
        sums, counts, gt_phrase = [], [], []
        for prompts, pmap in zip(text.prompts, text.gt_positive_maps):
            prompt = prompts[0]
            pmap = _fit_width(pmap.to(prompt.tokens.device), prompt.tokens.shape[0]).bool()
            emb = _mean_token_features(pmap, prompt.tokens) if len(pmap) else prompt.tokens[:0]
            ids = []
            for g in range(pmap.shape[0]):
                key = tuple(prompt.input_ids[pmap[g]].tolist())
                if key not in keys:
                    keys[key] = len(keys)
                    sums.append(torch.zeros_like(emb[g]))
                    counts.append(0)
                k = keys[key]
                sums[k] = sums[k] + emb[g]
                counts[k] += 1
                ids.append(k)
            gt_phrase.append(torch.as_tensor(ids, dtype=torch.long, device=pmap.device))
        if not sums:
            tokens = text.prompts[0][0].tokens
            return tokens.new_zeros(0, tokens.shape[1]), gt_phrase
        return torch.stack([s / c for s, c in zip(sums, counts)]), gt_phrase

    def _phrase_softmax_loss(self, regions, gt_index, fg, num_per_image, text):
        phrases, gt_phrase = self.batch_phrases(text)
        targets = torch.full_like(gt_index, phrases.shape[0])  # background = last column
        offset = 0
        for n, phrase_of_gt in zip(num_per_image, gt_phrase):
            sl = slice(offset, offset + n)
            is_fg = fg[sl]
            t = targets[sl].clone()
            t[is_fg] = phrase_of_gt.to(t.device)[gt_index[sl][is_fg]]
            targets[sl] = t
            offset += n
        logits = self.label_logits(regions, phrases).float()
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        return F.cross_entropy(logits, targets, reduction="mean")

    # ------------------------------------------------------------------ inference
    def predict_probs(
        self, predictions, proposals: List[Instances], text: RegionTextInputs
    ) -> List[torch.Tensor]:
        """Per image (R_i, L_i + 1) label scores, the last column background."""
        regions, _ = predictions
        out = []
        for emb, prompts, num_labels in zip(
            regions.split([len(p) for p in proposals]), text.prompts, text.num_labels
        ):
            probs = emb.new_zeros(emb.shape[0], num_labels + 1)
            if self.cls_loss == "softmax":
                label_emb = torch.cat(
                    [_mean_token_features(p.label_map, p.tokens) for p in prompts]
                )
                label_ids = torch.cat([p.label_ids for p in prompts]).to(emb.device)
                soft = self.label_logits(emb, label_emb).float().softmax(-1).to(probs.dtype)
                probs[:, label_ids] = soft[:, :-1]
                probs[:, -1] = soft[:, -1]
            else:
                for p in prompts:
                    token_probs = self.token_logits(emb, p).sigmoid()
                    scores = aggregate_token_scores(token_probs, p.label_map, self.score_agg)
                    probs[:, p.label_ids.to(emb.device)] = scores.to(probs.dtype)
                if num_labels:
                    probs[:, -1] = 1 - probs[:, :-1].max(dim=1).values
            out.append(probs)
        return out

    def predict_boxes(self, predictions, proposals: List[Instances]) -> List[torch.Tensor]:
        """Per image (R_i, 4) decoded boxes."""
        if not len(proposals):
            return []
        _, deltas = predictions
        boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        pred = self.box2box_transform.apply_deltas(deltas, boxes)
        return list(pred.split([len(p) for p in proposals]))

    def inference(self, predictions, proposals: List[Instances], text: RegionTextInputs):
        """Detections (score threshold, class-wise NMS, top-k) like `FastRCNNOutputLayers`."""
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals, text)
        image_shapes = [x.image_size for x in proposals]
        return fast_rcnn_inference(
            boxes,
            scores,
            image_shapes,
            self.test_score_thresh,
            self.test_nms_thresh,
            self.test_topk_per_image,
        )
