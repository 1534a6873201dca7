"""GLIP's one-stage grounding head: VL-DyHead tower + ATSS box/centerness + region-word logits."""
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.utils import comm
from torch import nn

from ..fusion import build_fusion_tower
from . import box_coder
from .anchors import grid_anchors
from .atss_assigner import atss_assign
from .box_pool import BoxPooledRegions
from .contrastive import gathered_region_word_contrastive_loss
from .losses import (
    centerness_targets,
    giou_loss,
    phrase_sigmoid_focal_loss,
    reduce_sum,
    token_sigmoid_focal_loss,
    token_softmax_loss,
)
from .postprocess import SCORE_AGGREGATIONS, select_detections
from .region_word import RegionWordScorer


class Scale(nn.Module):
    """A learned scalar multiplier (one per pyramid level)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init]))

    def forward(self, x):
        return x * self.scale


class GLIPATSSHead(nn.Module):
    """Dense grounding head of the GLIP meta-architecture. Not a proposal generator itself (its
    ``forward`` takes features and text, not Detectron2's (images, features, gt_instances)):
    ``MODEL.PROPOSAL_GENERATOR.NAME: GLIPATSSProposalGenerator`` wraps it as a two-stage model's
    RPN (:mod:`glip_d2.modeling.proposal_generator`)."""

    @configurable
    def __init__(
        self,
        *,
        tower: nn.Module,
        channels: int,
        language_dim: int,
        num_levels: int = 5,
        anchor_sizes=(64, 128, 256, 512, 1024),
        anchor_strides=(8, 16, 32, 64, 128),
        prior_prob: float = 0.01,
        log_scale: float = 0.0,
        clamp_dot_product: bool = True,
        use_fused_text: bool = True,
        topk: int = 9,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        cls_weight: float = 1.0,
        reg_weight: float = 2.0,
        ctr_weight: float = 1.0,
        score_thresh: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
        score_agg: str = "MEAN",
        no_object_token: int = -1,
        num_cls_convs: int = 0,
        region_context_convs: int = 0,
        region_pool: int = 0,
        region_pool_hidden: int = 0,
        region_pool_sampling: int = 1,
        region_pool_channels: int = 0,
        region_pool_from_level: int = -1,
        region_projection: str = "",
        gn_groups: int = 16,
        token_softmax_weight: float = 0.0,
        phrase_weight: float = 0.0,
        center_tokens: bool = False,
        contrastive_weight: float = 0.0,
    ):
        super().__init__()
        if len(anchor_sizes) != num_levels or len(anchor_strides) != num_levels:
            raise ValueError(
                f"MODEL.ATSS.ANCHOR_SIZES/ANCHOR_STRIDES need {num_levels} entries (one per input "
                f"feature), got {list(anchor_sizes)} / {list(anchor_strides)}"
            )
        self.tower = tower
        self.bbox_pred = nn.Conv2d(channels, 4, kernel_size=1)
        self.centerness = nn.Conv2d(channels, 1, kernel_size=1)
        for conv in (self.bbox_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)])
        # Optional scoring-only branch on the shared tower output (0 = official: the scorer reads
        # the tower output that box regression and centerness read).
        self.cls_tower = nn.Sequential(*[
            layer for _ in range(num_cls_convs) for layer in (
                nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(gn_groups, channels), nn.ReLU()
            )
        ])
        for layer in self.cls_tower:
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)
        # Optional residual 3x3 convs, zero-initialised, on the scoring features only: region
        # features become a learned linear read-out of the anchor's neighbourhood (an anchor is
        # 4 strides wide, so the 3x3 window covers its 2x2 sub-regions, the layout a two-stage
        # RoI head pools). 0 = official.
        self.region_context = nn.ModuleList(
            [nn.Conv2d(channels, channels, 3, padding=1) for _ in range(region_context_convs)]
        )
        for conv in self.region_context:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        # Optional box-pooled region features (k x k RoIAlign over each location's regressed box,
        # read back to C and added to the point feature); 0 = official (the point feature only).
        self.region_pool = BoxPooledRegions(
            channels, region_pool, region_pool_hidden, region_pool_sampling, region_pool_channels
        ) if region_pool > 0 else None
        if not -1 <= region_pool_from_level < num_levels:
            raise ValueError(
                f"MODEL.ATSS.REGION_POOL_FROM_LEVEL must be -1 (each level pools its own features) or a "
                f"level index 0..{num_levels - 1} (0 = P3), got {region_pool_from_level}."
            )
        self.region_pool_from_level = region_pool_from_level
        self.scorer = RegionWordScorer(
            channels, language_dim, prior_prob, log_scale, clamp_dot_product, region_projection,
            center_tokens,
        )
        self.anchor_sizes, self.anchor_strides = list(anchor_sizes), list(anchor_strides)
        self.use_fused_text = use_fused_text
        self.topk = topk
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        # Column set to 1 for negative anchors when the prompt reaches it (official quirk; -1 = off).
        self.no_object_token = no_object_token
        self.loss_weights = dict(loss_cls=cls_weight, loss_box_reg=reg_weight, loss_centerness=ctr_weight)
        if token_softmax_weight > 0:
            self.loss_weights["loss_token_softmax"] = token_softmax_weight
        if phrase_weight > 0:  # phrase-level focal loss; needs the mapper's "phrase_map"
            self.loss_weights["loss_phrase"] = phrase_weight
        if contrastive_weight > 0:  # GLIPv2 inter-image region-word contrastive loss
            self.loss_weights["loss_contrastive"] = contrastive_weight
        if score_agg.upper() not in SCORE_AGGREGATIONS:  # else: an error at the first test
            raise ValueError(f"MODEL.ATSS.SCORE_AGG {score_agg!r} is not one of {SCORE_AGGREGATIONS}.")
        self.test_args = dict(
            score_thresh=score_thresh, pre_nms_top_n=pre_nms_top_n, nms_thresh=nms_thresh,
            detections_per_img=detections_per_img, score_agg=score_agg,
        )

    @classmethod
    def from_config(cls, cfg, input_shape=None, language_dim: Optional[int] = None):
        a, fc = cfg.MODEL.ATSS, cfg.MODEL.DYHEAD.FUSE_CONFIG
        language_dim = language_dim or cfg.MODEL.LANGUAGE_BACKBONE.LANG_DIM
        return dict(
            tower=build_fusion_tower(cfg, language_dim),
            channels=cfg.MODEL.DYHEAD.CHANNELS,
            language_dim=language_dim,
            num_levels=len(cfg.MODEL.GLIP.IN_FEATURES),
            anchor_sizes=a.ANCHOR_SIZES,
            anchor_strides=a.ANCHOR_STRIDES,
            prior_prob=a.PRIOR_PROB,
            log_scale=a.LOG_SCALE,
            clamp_dot_product=fc.CLAMP_DOT_PRODUCT,
            use_fused_text=fc.EARLY_FUSE_ON and fc.USE_FUSED_FEATURES_DOT_PRODUCT,
            topk=a.TOPK,
            focal_alpha=a.FOCAL_ALPHA,
            focal_gamma=a.FOCAL_GAMMA,
            cls_weight=a.CLS_LOSS_WEIGHT,
            reg_weight=a.REG_LOSS_WEIGHT,
            ctr_weight=a.CENTERNESS_LOSS_WEIGHT,
            score_thresh=a.INFERENCE_TH,
            pre_nms_top_n=a.PRE_NMS_TOP_N,
            nms_thresh=a.NMS_TH,
            detections_per_img=a.DETECTIONS_PER_IMG,
            score_agg=a.SCORE_AGG,
            no_object_token=(cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN - 1) if a.NO_OBJECT_TOKEN_TARGET else -1,
            num_cls_convs=a.NUM_CLS_CONVS,
            region_context_convs=a.REGION_CONTEXT_CONVS,
            region_pool=a.REGION_POOL,
            region_pool_hidden=a.REGION_POOL_HIDDEN,
            region_pool_sampling=a.REGION_POOL_SAMPLING,
            region_pool_channels=a.REGION_POOL_CHANNELS,
            region_pool_from_level=a.REGION_POOL_FROM_LEVEL,
            region_projection=a.REGION_PROJECTION,
            gn_groups=cfg.MODEL.DYHEAD.GN_GROUPS,
            token_softmax_weight=a.TOKEN_SOFTMAX_LOSS_WEIGHT,
            phrase_weight=a.PHRASE_LOSS_WEIGHT,
            center_tokens=a.CENTER_TOKENS,
            contrastive_weight=cfg.MODEL.GLIP.LOSSES.CONTRASTIVE_WEIGHT,
        )

    # ------------------------------------------------------------------ forward
    def forward(self, features: List[torch.Tensor], lang: Dict[str, torch.Tensor]) -> Dict:
        """
        Args:
            features: P3..P7, each (B, C, H, W).
            lang: language backbone output ("hidden", "embedded", "masks").
        Returns:
            dict with per-level "box_regression" (B, 4, H, W), "centerness" (B, 1, H, W),
            "token_logits" (B, H*W, T), "visual" (tower output) and "text" (B, T, D), plus
            "anchors" per level (H*W, 4) in the official convention.
        """
        mask = lang["masks"]
        visual, text = self.tower(features, lang["hidden"], mask)
        embedding = text if self.use_fused_text else lang["embedded"]
        proj, bias = self.scorer.encode_tokens(embedding, mask)
        anchors = grid_anchors(
            self.anchor_sizes, self.anchor_strides, [f.shape[-2:] for f in features], features[0].device
        )
        box_reg, ctr, logits, regions = [], [], [], []
        scoring = [self._scoring_features(v) for v in visual]
        src = self.region_pool_from_level  # pool every level's boxes from this level (-1: own)
        pool_source = ()
        if src >= 0 and self.region_pool is not None:  # reduced once, read by every level
            pool_source = (self.region_pool.reduce(scoring[src]), self.anchor_strides[src])
        for lvl, (v, c) in enumerate(zip(visual, scoring)):
            box_reg.append(self.scales[lvl](self.bbox_pred(v)))
            ctr.append(self.centerness(v))
            if self.region_pool is not None:
                c = self.region_pool(c, box_reg[-1], anchors[lvl], self.anchor_strides[lvl], *pool_source)
            else:
                c = c.flatten(2).transpose(1, 2)  # (B, H*W, C)
            regions.append(c)
            logits.append(self.scorer.score(c, proj, bias))
        out = dict(box_regression=box_reg, centerness=ctr, token_logits=logits, visual=visual,
                   text=text, anchors=anchors, text_mask=mask)
        if self.training and "loss_contrastive" in self.loss_weights:
            out.update(region_features=regions, projected_tokens=proj)
        return out

    def _scoring_features(self, v: torch.Tensor) -> torch.Tensor:
        """The tower output of one level as the scorer reads it (optional cls convs, context)."""
        c = self.cls_tower(v)
        for conv in self.region_context:
            c = c + conv(c)
        return c

    # ------------------------------------------------------------------ training
    def losses(self, out: Dict, gt_boxes: List[torch.Tensor], gt_positive_maps: List[torch.Tensor],
               phrase_maps: Optional[List[Optional[torch.Tensor]]] = None):
        """
        Args:
            out: output of `forward`.
            gt_boxes: per image (G, 4) Detectron2 xyxy boxes in network-input pixels.
            gt_positive_maps: per image (G, T_map) bool: which tokens name each box.
            phrase_maps: per image (P, T_map) bool token map of every phrase of the prompt
                (the mapper's "phrase_map"), for the phrase-level loss; an image without one
                uses its boxes' distinct phrases.
        Returns:
            dict of scalar losses (already weighted).
        """
        anchors = out["anchors"]
        flat_anchors = torch.cat(anchors)
        num_tokens = out["token_logits"][0].shape[-1]
        token_targets, reg_targets, pos_masks = [], [], []
        for boxes, pmap in zip(gt_boxes, gt_positive_maps):
            gt = box_coder.to_official(boxes.to(flat_anchors.dtype))
            assigned = atss_assign(anchors, gt, self.topk)
            pos = assigned >= 0
            pm = torch.zeros(pmap.shape[0], num_tokens, dtype=torch.bool, device=flat_anchors.device)
            w = min(num_tokens, pmap.shape[1])
            pm[:, :w] = pmap[:, :w]
            tgt = torch.zeros(flat_anchors.shape[0], num_tokens, dtype=torch.bool, device=pm.device)
            reg = torch.zeros_like(flat_anchors)
            if 0 <= self.no_object_token < num_tokens:
                tgt[~pos, self.no_object_token] = True
            if pos.any():
                tgt[pos] = pm[assigned[pos]]
                reg[pos] = box_coder.encode(gt[assigned[pos]], flat_anchors[pos])
            token_targets.append(tgt)
            reg_targets.append(reg)
            pos_masks.append(pos)
        token_targets = torch.stack(token_targets)
        pos_mask = torch.stack(pos_masks)  # (B, A)
        reg_targets = torch.stack(reg_targets)

        logits = torch.cat(out["token_logits"], dim=1).float()  # (B, A, T)
        box_reg = torch.cat([r.permute(0, 2, 3, 1).reshape(r.shape[0], -1, 4) for r in out["box_regression"]], 1)
        ctr = torch.cat([c.permute(0, 2, 3, 1).reshape(c.shape[0], -1) for c in out["centerness"]], 1)
        num_gpus = comm.get_world_size()
        num_pos = reduce_sum(pos_mask.sum().float().reshape(1)).item()
        num_pos_avg = max(num_pos / num_gpus, 1.0)

        loss_cls = token_sigmoid_focal_loss(
            logits, token_targets, out["text_mask"], self.focal_alpha, self.focal_gamma
        ) / num_pos_avg
        if pos_mask.any():
            anc = flat_anchors.unsqueeze(0).expand_as(reg_targets)[pos_mask]
            reg_t = reg_targets[pos_mask]
            ctr_t = centerness_targets(box_coder.decode(reg_t, anc), anc)
            ctr_sum = reduce_sum(ctr_t.sum().detach().reshape(1)).item() / num_gpus
            loss_reg = giou_loss(box_reg[pos_mask].float(), reg_t, anc, ctr_t) / max(ctr_sum, 1e-6)
            loss_ctr = nn.functional.binary_cross_entropy_with_logits(
                ctr[pos_mask].float(), ctr_t, reduction="sum"
            ) / num_pos_avg
        else:
            # the other workers all-reduce their centerness sums: join with 0 (as official)
            reduce_sum(ctr.new_zeros(1, dtype=torch.float32))
            loss_reg = box_reg.sum() * 0.0
            loss_ctr = ctr.sum() * 0.0
        raw = dict(loss_cls=loss_cls, loss_box_reg=loss_reg, loss_centerness=loss_ctr)
        if "loss_token_softmax" in self.loss_weights:
            raw["loss_token_softmax"] = token_softmax_loss(
                logits, token_targets & pos_mask[..., None], out["text_mask"]
            ) / num_pos_avg
        if "loss_phrase" in self.loss_weights:
            maps = [
                pm if pm is not None else torch.unique(gm, dim=0)
                for pm, gm in zip(phrase_maps or [None] * len(gt_positive_maps), gt_positive_maps)
            ]
            raw["loss_phrase"] = phrase_sigmoid_focal_loss(
                logits, token_targets, [m.to(logits.device) for m in maps], self.focal_alpha, self.focal_gamma
            ) / num_pos_avg
        if "loss_contrastive" in self.loss_weights:
            raw["loss_contrastive"] = self._contrastive_loss(out, token_targets, pos_mask)
        return {k: v * self.loss_weights[k] for k, v in raw.items()}

    def _contrastive_loss(self, out: Dict, token_targets: torch.Tensor, pos_mask: torch.Tensor):
        """GLIPv2 inter-image region-word contrastive loss: the positive anchors' region
        features of the whole (global) batch against the real tokens of every prompt in it."""
        regions = torch.cat(out["region_features"], dim=1)[pos_mask].float()  # (P, C)
        if self.scorer.proj_region is not None:
            regions = self.scorer.proj_region(regions)
        real = out["text_mask"] > 0  # (B, T)
        words = out["projected_tokens"][real].float()  # (W, C)
        # (P, B*T): a region's targets sit in the columns of its own image's prompt only
        b, t = real.shape
        image_of_region = pos_mask.nonzero()[:, 0]
        targets = token_targets.new_zeros(regions.shape[0], b, t)
        targets[torch.arange(regions.shape[0], device=targets.device), image_of_region] = (
            token_targets[pos_mask]
        )
        targets = targets.reshape(regions.shape[0], b * t)[:, real.reshape(-1)]
        return gathered_region_word_contrastive_loss(
            regions, words, targets, self.scorer.log_scale.exp().reciprocal()
        )

    # ------------------------------------------------------------------ inference
    def inference(self, out: Dict, positive_maps: List[torch.Tensor], image_sizes, apply_nms: bool = True):
        """Detections per image in the official box convention (see `postprocess.select_detections`)."""
        return select_detections(
            out["box_regression"], out["centerness"], out["token_logits"], out["anchors"],
            positive_maps, image_sizes, apply_nms=apply_nms, **self.test_args,
        )
