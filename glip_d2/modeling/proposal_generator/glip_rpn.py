"""GLIP's dense grounding head as the RPN of a two-stage model.

``MODEL.PROPOSAL_GENERATOR.NAME: "GLIPATSSProposalGenerator"`` in a ``LanguageAwareRCNN`` config:
a :class:`~glip_d2.modeling.heads.GLIPATSSHead` (VL-DyHead tower, ATSS box / centerness /
token outputs) reads the prompt the language-aware R-CNN encodes for its ROI heads, is trained
with GLIP's ATSS losses on the image's caption, and proposes the boxes whose best token
(among the prompt's names at test time) scores highest, through Detectron2's
``find_top_rpn_proposals`` (per-level top-k, NMS, ``RPN.POST_NMS_TOPK_*``).

Anchors sit at the strides of the features the generator reads (``MODEL.RPN.IN_FEATURES``, e.g.
P2-P6 at 4..64 in the R50-FPN configs), not at ``MODEL.ATSS.ANCHOR_STRIDES``, which are written
for GLIP's P3-P7 (see :func:`anchor_layout`).
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals
from detectron2.structures import ImageList, Instances
from torch import nn

from ..fusion import check_pyramid_levels
from ..heads import GLIPATSSHead
from ..heads import box_coder
from ..roi_heads import EncodedPrompt, RegionTextInputs

__all__ = ["GLIPATSSProposalGenerator", "anchor_layout"]

logger = logging.getLogger(__name__)

# The config defaults of MODEL.ATSS.ANCHOR_STRIDES / ANCHOR_SIZES (glip_d2/config/glip.py): GLIP's
# P3-P7, anchors 8 strides wide (ATSS's octave base scale). A config that keeps them has not
# chosen a layout, so the generator takes the strides from its features and keeps the 8.
_DEFAULT_ATSS_STRIDES = [8, 16, 32, 64, 128]
_DEFAULT_ATSS_SIZES = [64, 128, 256, 512, 1024]
_ATSS_ANCHOR_SCALE = 8
# The head's loss names -> the generator's (Detectron2 RPN style, apart from the ROI heads');
# any other head loss "loss_x" is reported as "loss_rpn_x".
_LOSS_NAMES = {"loss_cls": "loss_rpn_cls", "loss_box_reg": "loss_rpn_loc",
               "loss_centerness": "loss_rpn_centerness"}


def anchor_layout(
    in_features: Sequence[str], feature_strides: Sequence[int], atss_strides: Sequence[int],
    atss_sizes: Sequence[float],
) -> Tuple[List[int], List[float]]:
    """(strides, sizes) of the generator's anchors, one per feature it reads.

    The strides are always the features' own (``input_shape[f].stride``): anchors at any other
    stride sit at the wrong place (at 8..128 on P2-P6, every anchor at twice its position).
    ``MODEL.ATSS.ANCHOR_STRIDES`` left at its default does not constrain them; set to anything
    else it must equal them. ``MODEL.ATSS.ANCHOR_SIZES`` left at its default becomes ATSS's
    8 x stride of each feature (64..1024 on P3-P7, as before; 32..512 on P2-P6), whether the
    strides are left at theirs or set to the features'; set, it is used as written (input
    pixels).

    Raises:
        ValueError: ANCHOR_STRIDES set to strides that are not the features'.
    """
    strides, atss_strides = [int(s) for s in feature_strides], [int(s) for s in atss_strides]
    if atss_strides != strides and atss_strides != _DEFAULT_ATSS_STRIDES:
        raise ValueError(
            f"MODEL.ATSS.ANCHOR_STRIDES {atss_strides} disagree with the strides {strides} of "
            f"MODEL.RPN.IN_FEATURES {list(in_features)}, which GLIPATSSProposalGenerator reads: "
            f"its anchors would sit at the wrong places. Set MODEL.ATSS.ANCHOR_STRIDES to "
            f"{strides} (and ANCHOR_SIZES to e.g. {[_ATSS_ANCHOR_SCALE * s for s in strides]}, "
            f"{_ATSS_ANCHOR_SCALE} strides as in ATSS), or leave both at their defaults to take "
            "them from the features."
        )
    if list(atss_sizes) == _DEFAULT_ATSS_SIZES:  # GLIP's P3-P7 sizes: 8 strides of each level
        sizes = [_ATSS_ANCHOR_SCALE * s for s in strides]
    else:
        sizes = list(atss_sizes)
    if atss_strides != strides:
        logger.info(
            f"GLIPATSSProposalGenerator: anchors at the strides {strides} of "
            f"{list(in_features)}, sizes {sizes} (MODEL.ATSS.ANCHOR_STRIDES {atss_strides} are "
            "GLIP's P3-P7 default)."
        )
    return strides, sizes


@PROPOSAL_GENERATOR_REGISTRY.register()
class GLIPATSSProposalGenerator(nn.Module):
    """Detectron2's proposal-generator interface around a :class:`GLIPATSSHead`.

    ``forward(images, features, gt_instances=None, text=None)`` returns ``(proposals, losses)``
    like Detectron2's RPN; ``text`` is the :class:`RegionTextInputs` the language-aware R-CNN
    passes (one prompt per image in training, the vocabulary chunks or the grounding caption at
    test time). Proposals carry ``proposal_boxes`` and ``objectness_logits`` (the logit of
    sqrt(best token probability x centerness), GLIP's detection score with MAX aggregation).
    Losses are the head's, renamed ``loss_rpn_cls`` (token focal loss), ``loss_rpn_loc`` (GIoU)
    and ``loss_rpn_centerness`` so they do not collide with the ROI heads'; the optional ones
    are ``loss_rpn_token_softmax`` (``ATSS.TOKEN_SOFTMAX_LOSS_WEIGHT``), ``loss_rpn_phrase``
    (``ATSS.PHRASE_LOSS_WEIGHT``; the two-stage model passes no mapper ``phrase_map``, so the
    phrases are those of the image's boxes, the head's fallback) and ``loss_rpn_contrastive``
    (``GLIP.LOSSES.CONTRASTIVE_WEIGHT``). At test time the (image, prompt) pairs go through the
    head ``MODEL.GLIP.INFERENCE_BATCH`` at a time, as in one-stage GLIP.
    """

    takes_text = True  # LanguageAwareRCNN passes the prompt as `text=`

    @configurable
    def __init__(
        self,
        *,
        head: GLIPATSSHead,
        in_features: List[str],
        pre_nms_topk: Dict[bool, int],
        post_nms_topk: Dict[bool, int],
        nms_thresh: float = 0.7,
        min_box_size: float = 0.0,
        loss_weight: float = 1.0,
        inference_batch: int = 1,
    ):
        """
        Args:
            head: the dense grounding head (its anchors: one per level of ``in_features``).
            in_features: feature maps the head reads, finest first.
            pre_nms_topk, post_nms_topk: {training: k} per level before NMS / per image after.
            nms_thresh: NMS IoU threshold of the proposals.
            min_box_size: proposals smaller than this (in input pixels) are dropped.
            loss_weight: multiplies the head's losses.
            inference_batch: at test time, at most this many (image, prompt) pairs run through
                the head in one pass (MODEL.GLIP.INFERENCE_BATCH, as in one-stage GLIP); an
                LVIS vocabulary is 31 prompt chunks per image.
        """
        super().__init__()
        if inference_batch < 1:
            raise ValueError(f"MODEL.GLIP.INFERENCE_BATCH must be >= 1, got {inference_batch}.")
        self.head = head
        self.in_features = list(in_features)
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.nms_thresh = nms_thresh
        self.min_box_size = min_box_size
        self.loss_weight = loss_weight
        self.inference_batch = inference_batch

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        rpn = cfg.MODEL.RPN
        in_features = list(rpn.IN_FEATURES)
        missing = [f for f in in_features if f not in input_shape]
        channels = {input_shape[f].channels for f in in_features if f in input_shape}
        if missing or channels != {cfg.MODEL.DYHEAD.CHANNELS}:
            raise ValueError(
                f"GLIPATSSProposalGenerator reads MODEL.RPN.IN_FEATURES {in_features}; the backbone "
                f"gives { {k: v.channels for k, v in input_shape.items()} } and MODEL.DYHEAD.CHANNELS "
                f"is {cfg.MODEL.DYHEAD.CHANNELS}: every feature must exist and have DYHEAD.CHANNELS "
                "channels (set it to FPN.OUT_CHANNELS)."
            )
        check_pyramid_levels(
            "MODEL.RPN.IN_FEATURES", in_features, [input_shape[f].stride for f in in_features]
        )
        head_args = GLIPATSSHead.from_config(cfg, language_dim=cfg.MODEL.LANGUAGE_BACKBONE.LANG_DIM)
        head_args["num_levels"] = len(in_features)
        head_args["anchor_strides"], head_args["anchor_sizes"] = anchor_layout(
            in_features, [input_shape[f].stride for f in in_features],
            cfg.MODEL.ATSS.ANCHOR_STRIDES, cfg.MODEL.ATSS.ANCHOR_SIZES,
        )
        return {
            "head": GLIPATSSHead(**head_args),
            "in_features": in_features,
            "pre_nms_topk": {True: rpn.PRE_NMS_TOPK_TRAIN, False: rpn.PRE_NMS_TOPK_TEST},
            "post_nms_topk": {True: rpn.POST_NMS_TOPK_TRAIN, False: rpn.POST_NMS_TOPK_TEST},
            "nms_thresh": rpn.NMS_THRESH,
            "min_box_size": cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE,
            "loss_weight": rpn.LOSS_WEIGHT,
            "inference_batch": cfg.MODEL.GLIP.INFERENCE_BATCH,
        }

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        gt_instances: Optional[List[Instances]] = None,
        text: Optional[RegionTextInputs] = None,
    ):
        """
        Args:
            images: the batch (``image_sizes`` bound the proposals).
            features: backbone outputs by name.
            gt_instances: training: per image ``gt_boxes`` (input pixels).
            text: the prompts; in training also ``gt_positive_maps``.

        Returns:
            (list of Instances per image, dict of losses (empty at test time)).

        Raises:
            ValueError: without ``text`` (use the LanguageAwareRCNN meta-architecture).
        """
        if text is None:
            raise ValueError(
                "GLIPATSSProposalGenerator scores regions against a prompt and got none: use it "
                "with MODEL.META_ARCHITECTURE 'LanguageAwareRCNN', which passes the prompt."
            )
        feats = [features[f] for f in self.in_features]
        # One (image, prompt) pair per row: images repeat for their prompt chunks.
        owner, prompts = [], []
        for i, image_prompts in enumerate(text.prompts):
            for p in image_prompts:
                owner.append(i)
                prompts.append(p)
        index = torch.as_tensor(owner, device=feats[0].device)
        tokens, mask, token_filter = _stack_prompts(prompts)
        # Test time: the pairs in groups of `inference_batch` (every pair at once would hold the
        # tower's activations of all chunks of every image together).
        step = len(prompts) if self.training else self.inference_batch
        outs = []
        for start in range(0, len(prompts), step):
            group = slice(start, start + step)
            rows = [f[index[group]] for f in feats]
            lang = {"hidden": tokens[group], "embedded": tokens[group], "masks": mask[group]}
            outs.append(self.head(rows, lang))
        out = outs[0] if len(outs) == 1 else _cat_outputs(outs)

        losses = {}
        if self.training:
            if gt_instances is None or text.gt_positive_maps is None:
                raise ValueError("Training GLIPATSSProposalGenerator needs gt_instances and "
                                 "text.gt_positive_maps.")
            raw = self.head.losses(out, [x.gt_boxes.tensor for x in gt_instances], text.gt_positive_maps)
            losses = {_rpn_loss_name(k): v * self.loss_weight for k, v in raw.items()}
        proposals = self._proposals(out, token_filter, index, images.image_sizes)
        return proposals, losses

    @torch.no_grad()
    def _proposals(self, out: Dict, token_filter: torch.Tensor, owner: torch.Tensor, image_sizes):
        """Per image: the pairs' boxes and objectness, per level, through find_top_rpn_proposals.
        Proposals are fixed inputs of the ROI heads (no gradient), as in Detectron2's RPN.

        Images may have different numbers of rows (a grounding caption is one prompt, a
        vocabulary several chunks), so each image goes through find_top_rpn_proposals alone: its
        proposals are those it gets in a batch of its own."""
        boxes_per_level, logits_per_level = [], []
        for reg, ctr, logits, anchors in zip(
            out["box_regression"], out["centerness"], out["token_logits"], out["anchors"]
        ):
            n = reg.shape[0]
            deltas = reg.permute(0, 2, 3, 1).reshape(-1, 4).float()
            boxes = box_coder.from_official(
                box_coder.decode(deltas, anchors.repeat(n, 1).to(deltas))
            ).reshape(n, -1, 4)
            token_logit = logits.float().masked_fill(~token_filter[:, None, :], float("-inf"))
            prob = token_logit.max(dim=-1)[0].sigmoid()  # (n, HW)
            score = (prob * ctr.flatten(1).float().sigmoid()).sqrt().clamp(1e-6, 1 - 1e-6)
            boxes_per_level.append(boxes)
            logits_per_level.append(torch.logit(score))
        proposals = []
        for i, size in enumerate(image_sizes):
            rows = owner == i  # the image's prompt chunks, concatenated along the anchor axis
            proposals.extend(find_top_rpn_proposals(
                [b[rows].reshape(1, -1, 4) for b in boxes_per_level],
                [o[rows].reshape(1, -1) for o in logits_per_level],
                [size],
                self.nms_thresh,
                self.pre_nms_topk[self.training],
                self.post_nms_topk[self.training],
                self.min_box_size,
                self.training,
            ))
        return proposals


def _cat_outputs(outs: List[Dict]) -> Dict:
    """The head outputs `_proposals` reads, of groups of pairs, as one output of all pairs."""
    out = {"anchors": outs[0]["anchors"]}
    for key in ("box_regression", "centerness", "token_logits"):
        out[key] = [torch.cat(level) for level in zip(*(o[key] for o in outs))]
    return out


def _rpn_loss_name(name: str) -> str:
    """The generator's name of a head loss: see _LOSS_NAMES; "loss_x" -> "loss_rpn_x"."""
    return _LOSS_NAMES.get(name, name.replace("loss_", "loss_rpn_", 1))


# The issue-16 route, ``MODEL.PROPOSAL_GENERATOR.NAME "GLIPATSSHead"`` (the head's own name; its
# forward is the one-stage model's, not Detectron2's proposal-generator interface), builds the
# wrapper above, so either name gives GLIP's head as the RPN.
PROPOSAL_GENERATOR_REGISTRY._do_register("GLIPATSSHead", GLIPATSSProposalGenerator)


def _stack_prompts(prompts: List[EncodedPrompt]):
    """(tokens (P, T, D), mask (P, T), token filter (P, T) bool) with prompts padded to the
    longest; the filter marks the tokens whose score counts: the labels' tokens when the prompt
    has a label map (test time), else every real token but [CLS] and [SEP]."""
    length = max(p.tokens.shape[0] for p in prompts)
    tokens = torch.stack([F.pad(p.tokens, (0, 0, 0, length - p.tokens.shape[0])) for p in prompts])
    mask = torch.stack([F.pad(p.mask, (0, length - p.mask.shape[0])) for p in prompts])
    filters = []
    for p, m in zip(prompts, mask):
        if p.label_map is not None:
            f = p.label_map.any(dim=0)[:length]
            f = F.pad(f, (0, length - f.shape[0]))
        else:
            f = m.bool().clone()
            real = int(f.sum())
            f[0] = False
            if real > 1:
                f[real - 1] = False
        filters.append(f.to(mask.device))
    return tokens, mask, torch.stack(filters)
