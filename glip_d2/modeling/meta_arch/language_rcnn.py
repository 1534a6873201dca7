"""`LanguageAwareRCNN`: Detectron2's GeneralizedRCNN that also encodes text for its ROI heads.

Stock `GeneralizedRCNN.forward` never passes `batched_inputs` to `roi_heads`, so a text-aware
head cannot see the captions. This thin subclass adds a language backbone (the same registry as
GLIP), encodes each image's caption (training) or the vocabulary prompts / grounding caption
(inference), and calls `roi_heads(..., text=RegionTextInputs)`. Everything else (backbone, RPN,
pre/post-processing, visualisation) is Detectron2's.

Optionally (MODEL.LANGUAGE_ROI_HEADS.DEEP_FUSION) the VL-DyHead tower fuses the FPN features
with the prompt before the RPN and the ROI heads: a two-stage GLIP. Fused image features depend on
the prompt, so at test time the RPN and ROI heads then run once per vocabulary chunk and the
chunks' detections are merged by class-wise NMS (as the one-stage GLIP does); with the "softmax"
classification loss the softmax then runs over each chunk's names, not the whole vocabulary.
"""

import inspect
import logging
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import batched_nms
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import ImageList, Instances
from detectron2.utils.events import get_event_storage
from torch import nn

from ...device import CPUFallbackMixin
from ...text import load_tokenizer
from ..fusion import build_fusion_tower, check_pyramid_levels
from ..language import build_language_backbone, resolve_text_model_path
from ..roi_heads import EncodedPrompt, RegionTextInputs
from ..tuning import TWO_STAGE_LINEAR_PREFIXES, PromptTuning, apply_tuning
from .glip import check_loss_weights
from .prompting import PromptingMixin, default_vocabulary

__all__ = ["LanguageAwareRCNN"]

logger = logging.getLogger(__name__)


def _precomputed_proposals(batched_inputs: List[Dict], device) -> List[Instances]:
    """Each input's "proposals" (MODEL.LOAD_PROPOSALS: the model has no proposal generator)."""
    missing = [x.get("image_id", x.get("file_name", i)) for i, x in enumerate(batched_inputs)
               if "proposals" not in x]
    if missing:
        raise ValueError(
            f"MODEL.LOAD_PROPOSALS is on (no proposal generator), but input(s) {missing[:3]} have "
            "no 'proposals'. glip_d2's GroundingDatasetMapper and train_net.py do not load "
            "DATASETS.PROPOSAL_FILES_*: use an RPN (MODEL.LOAD_PROPOSALS False, "
            "MODEL.PROPOSAL_GENERATOR.NAME 'RPN' or 'GLIPATSSProposalGenerator'), or give each "
            "input an Instances of proposal_boxes and objectness_logits as 'proposals'."
        )
    return [x["proposals"].to(device) for x in batched_inputs]


# MODEL.GLIP keys of heads only one-stage GLIP has, with their "off" value.
_ONE_STAGE_ONLY = {
    "LOSSES.MLM_WEIGHT": 0.0,
    "LOSSES.ITC_WEIGHT": 0.0,
    "LOSSES.ITM_WEIGHT": 0.0,
    "TEXT_BOX_HEAD.NAME": "",
    "TEXT_BOX_HEAD.PREDICT": False,
}


def _check_one_stage_keys(cfg) -> None:
    """The two-stage model has no MLM, ITC/ITM or text-to-box head: those keys set on it were
    ignored, so a refexp evaluation with TEXT_BOX_HEAD.PREDICT scored the ROI detections, and
    the losses never ran. The loss weights it does read (CONTRASTIVE_WEIGHT, through GLIP's
    head as the RPN) must be finite and >= 0, as for one-stage GLIP.

    Raises:
        ValueError: naming the keys.
    """
    check_loss_weights(cfg)
    on = []
    for key, off in _ONE_STAGE_ONLY.items():
        node = cfg.MODEL.GLIP
        for part in key.split("."):
            node = node[part]
        if node != off:
            on.append(f"MODEL.GLIP.{key} {node!r}")
    if on:
        raise ValueError(
            f"{', '.join(on)}: META_ARCHITECTURE 'LanguageAwareRCNN' has no such head (MLM, "
            "ITC/ITM and the text-to-box head are one-stage GLIP's, META_ARCHITECTURE 'GLIP'); "
            "set them off (0, NAME '') for the two-stage model."
        )


@META_ARCH_REGISTRY.register()
class LanguageAwareRCNN(CPUFallbackMixin, PromptingMixin, GeneralizedRCNN):
    """Faster / Mask / Cascade R-CNN whose ROI heads classify regions against text.

    Inputs are those of `GroundingDatasetMapper`: in training "caption" and instances with
    `gt_positive_map`; at test time optionally "caption" + "phrase_spans" (grounding: classes are
    phrase indices), otherwise the model detects its vocabulary (`set_vocabulary`,
    MODEL.GLIP.VOCABULARY, or thing_classes of DATASETS.TEST[0]) and `pred_classes` index it.
    Use with ROI_HEADS.NAME "LanguageAwareStandardROIHeads" or "LanguageAwareCascadeROIHeads".
    """

    @configurable
    def __init__(
        self,
        *,
        language_backbone: nn.Module,
        tokenizer,
        max_query_len: int = 256,
        pad_to_max: bool = True,
        separator: str = ". ",
        vocabulary: Optional[Sequence[str]] = None,
        test_chunk_size: int = 0,
        fusion: Optional[nn.Module] = None,
        fusion_in_features: Sequence[str] = (),
        use_fused_text: bool = True,
        text_dropout_when_frozen: bool = False,
        tuning: str = "full",
        freeze_backbone: bool = False,
        **kwargs,
    ):
        """
        Args:
            language_backbone: text encoder (LANGUAGE_BACKBONE_REGISTRY interface).
            tokenizer: fast tokenizer matching the encoder (and the data mapper).
            max_query_len, pad_to_max: tokenization (MAX_QUERY_LEN, PAD_MAX).
            separator: between names in vocabulary prompts.
            vocabulary: names detected when an input has no caption.
            test_chunk_size: names per prompt chunk (0 = as many as fit).
            fusion: optional fusion tower run on `fusion_in_features` before RPN / ROI heads.
            fusion_in_features: backbone outputs the tower fuses.
            use_fused_text: with fusion, score with the tower's text features.
            text_dropout_when_frozen: keep a frozen text encoder in train mode (its dropout on)
                while the rest trains (LANGUAGE_BACKBONE.DROPOUT_WHEN_FROZEN); False = eval mode.
            tuning: which parameters train (MODEL.GLIP.TUNING, glip_d2/modeling/tuning.py), as
                in one-stage GLIP; "linear" trains the ROI box predictor (and a mask head's last
                layer), "prompt" a learned offset on the frozen text encoder's prompt features.
            freeze_backbone: freeze the image backbone and FPN entirely, kept in eval mode while
                the rest trains (MODEL.GLIP.FREEZE_BACKBONE, as in one-stage GLIP).
            kwargs: `GeneralizedRCNN` arguments.
        """
        super().__init__(**kwargs)
        self.language_backbone = language_backbone
        self.tokenizer = tokenizer
        self.max_query_len = max_query_len
        self.pad_to_max = pad_to_max
        self.separator = separator
        self.test_chunk_size = test_chunk_size
        self.fusion = fusion
        self.fusion_in_features = list(fusion_in_features)
        self.use_fused_text = use_fused_text
        self.text_dropout_when_frozen = text_dropout_when_frozen
        self._init_prompting(vocabulary)
        self.tuning = tuning
        self.prompt_tuning = None
        if tuning == "prompt":
            self.prompt_tuning = PromptTuning(max_query_len, language_backbone.language_dim)
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        # "full" freezes nothing more and keeps Detectron2's train(); the other modes (and a
        # frozen backbone) keep the frozen feature extractors in eval mode (no dropout /
        # drop-path), as one-stage GLIP does. The RPN and the ROI heads stay in train mode:
        # Detectron2 switches their proposals, sampling and losses on `training`.
        if tuning != "full":
            frozen = apply_tuning(self, tuning, TWO_STAGE_LINEAR_PREFIXES)
        else:
            frozen = ["backbone"] if freeze_backbone else []
        extractors = ("backbone", "language_backbone", "fusion")
        self._tuning_frozen = [m for m in frozen if m.split(".")[0] in extractors]
        # in the frozen heads, which stay in train mode, BatchNorms would still update their
        # running statistics: they are kept in eval mode
        self._frozen_head_norms = [
            f"{m}.{n}" if n else m
            for m in frozen if m.split(".")[0] not in extractors
            for n, module in self.get_submodule(m).named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
        ]
        self.train(self.training)

    def train(self, mode: bool = True):
        """A frozen text encoder (LANGUAGE_BACKBONE.FREEZE) stays in eval mode, without dropout,
        as one-stage GLIP's frozen modules, unless ``text_dropout_when_frozen``; so do the
        extractors a tuning mode froze, and the BatchNorms of the heads it froze (the heads
        themselves stay in train mode)."""
        super().train(mode)
        text = getattr(self, "language_backbone", None)  # None while GeneralizedRCNN is built
        params = list(text.parameters()) if text is not None else []
        frozen = bool(params) and not any(p.requires_grad for p in params)
        if mode and frozen and not self.text_dropout_when_frozen:
            text.eval()
        if mode:
            for name in (*getattr(self, "_tuning_frozen", ()),
                         *getattr(self, "_frozen_head_norms", ())):
                self.get_submodule(name).eval()
        return self

    @classmethod
    def from_config(cls, cfg):
        _check_one_stage_keys(cfg)
        ret = super().from_config(cfg)
        if "text" not in inspect.signature(ret["roi_heads"].forward).parameters:
            # a stock head would fail at the first forward with "unexpected keyword 'text'"
            raise ValueError(
                f"MODEL.ROI_HEADS.NAME {cfg.MODEL.ROI_HEADS.NAME!r} builds ROI heads that do not "
                "read text, and META_ARCHITECTURE 'LanguageAwareRCNN' scores regions against "
                "text; set MODEL.ROI_HEADS.NAME 'LanguageAwareStandardROIHeads' (Faster / Mask "
                "R-CNN) or 'LanguageAwareCascadeROIHeads' (Cascade R-CNN)."
            )
        lb = cfg.MODEL.LANGUAGE_BACKBONE
        language_backbone = build_language_backbone(cfg)
        if language_backbone.language_dim != lb.LANG_DIM:
            raise ValueError(
                f"MODEL.LANGUAGE_BACKBONE.LANG_DIM is {lb.LANG_DIM} but the text encoder "
                f"{lb.MODEL_TYPE!r} gives {language_backbone.language_dim}-d features; set "
                f"LANG_DIM "
                f"{language_backbone.language_dim} (the ROI heads are built from it)."
            )
        fusion, fusion_in = None, []
        if cfg.MODEL.LANGUAGE_ROI_HEADS.DEEP_FUSION:
            shapes = ret["backbone"].output_shape()
            fusion_in = list(cfg.MODEL.LANGUAGE_ROI_HEADS.FUSION_IN_FEATURES) or sorted(
                shapes, key=lambda k: shapes[k].stride
            )
            bad = [
                f
                for f in fusion_in
                if f not in shapes or shapes[f].channels != cfg.MODEL.DYHEAD.CHANNELS
            ]
            if bad:
                raise ValueError(
                    f"Fusion features {bad} are not backbone outputs with MODEL.DYHEAD.CHANNELS="
                    f"{cfg.MODEL.DYHEAD.CHANNELS} channels (backbone gives "
                    f"{ {k: v.channels for k, v in shapes.items()} }); set DYHEAD.CHANNELS to "
                    "FPN.OUT_CHANNELS or fix LANGUAGE_ROI_HEADS.FUSION_IN_FEATURES."
                )
            check_pyramid_levels(
                "MODEL.LANGUAGE_ROI_HEADS.FUSION_IN_FEATURES",
                fusion_in,
                [shapes[f].stride for f in fusion_in],
            )
            fusion = build_fusion_tower(cfg, language_backbone.language_dim)
        fc = cfg.MODEL.DYHEAD.FUSE_CONFIG
        ret.update(
            language_backbone=language_backbone,
            tokenizer=load_tokenizer(resolve_text_model_path(lb.TOKENIZER_TYPE or lb.MODEL_TYPE)),
            max_query_len=lb.MAX_QUERY_LEN,
            pad_to_max=lb.PAD_MAX,
            separator=cfg.INPUT.GROUNDING.SEPARATION_TOKENS,
            vocabulary=default_vocabulary(cfg),
            test_chunk_size=cfg.MODEL.GLIP.TEST_CHUNK_SIZE,
            fusion=fusion,
            fusion_in_features=fusion_in,
            use_fused_text=fc.USE_FUSED_FEATURES_DOT_PRODUCT,
            text_dropout_when_frozen=lb.DROPOUT_WHEN_FROZEN,
            tuning=cfg.MODEL.GLIP.TUNING,
            freeze_backbone=cfg.MODEL.GLIP.FREEZE_BACKBONE,
        )
        return ret

    # ------------------------------------------------------------------ text
    def _prompt_text(self, caption: str, spans_per_label, label_ids):
        """(input_ids (1, T), language dict, label map (L, T), label ids (L,)); cached in eval."""
        ids, lang, pmap = self._cached_prompt(caption, spans_per_label)
        return ids, lang, pmap, torch.as_tensor(label_ids, dtype=torch.long, device=self.device)

    def _fuse(self, features: Dict[str, torch.Tensor], lang: Dict[str, torch.Tensor]):
        """(features with the fused levels replaced, token features the ROI heads score with)."""
        if self.fusion is None:
            return features, lang["embedded"]
        visual, text = self.fusion(
            [features[f] for f in self.fusion_in_features], lang["hidden"], lang["masks"]
        )
        features = dict(features)
        features.update(zip(self.fusion_in_features, visual))
        return features, (text if self.use_fused_text else lang["embedded"])

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[Dict]):
        """Training: losses of the RPN and the ROI heads. Inference: see `inference`."""
        if not self.training:
            return self.inference(batched_inputs)
        self._check_training_inputs(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        if getattr(self.roi_heads, "mask_on", False):
            for x, inst in zip(batched_inputs, gt_instances):
                if len(inst) and not inst.has("gt_masks"):
                    raise ValueError(
                        f"MODEL.MASK_ON needs instances.gt_masks, image {x.get('image_id')!r} of "
                        f"dataset {x.get('dataset_name', '?')!r} has none: its annotations carry no "
                        "'segmentation'. The dataset's loader must keep them (Detectron2's "
                        "load_coco_json and glip_d2's register_custom_coco / DATASETS.CUSTOM do; "
                        "grounding and box-only datasets have none), and the mapper needs "
                        "MODEL.MASK_ON."
                    )
        features = self.backbone(images.tensor)
        tok, lang = self.encode_text([x["caption"] for x in batched_inputs])
        features, tokens = self._fuse(features, lang)
        ids = tok["input_ids"].to(self.device)
        text = RegionTextInputs(
            prompts=[
                [EncodedPrompt(tokens[i], lang["masks"][i], ids[i])]
                for i in range(len(batched_inputs))
            ],
            gt_positive_maps=[inst.gt_positive_map for inst in gt_instances],
        )
        if self.proposal_generator is not None:
            proposals, proposal_losses = self._run_proposal_generator(images, features, gt_instances, text)
        else:
            proposals = _precomputed_proposals(batched_inputs, self.device)
            proposal_losses = {}
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances, text=text)
        if self.vis_period > 0:
            storage = get_event_storage()
            if storage.iter % self.vis_period == 0:
                self.visualize_training(batched_inputs, proposals)
        losses = dict(detector_losses)
        losses.update(proposal_losses)
        return losses

    def inference(
        self,
        batched_inputs: List[Dict],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        """Detections per image. Without fusion the image side (backbone, RPN, box head) runs
        once per image and only the scoring once per prompt chunk (a prompt-reading RPN,
        GLIPATSSProposalGenerator, runs once per (image, chunk) pair)."""
        assert not self.training
        if detected_instances is not None and self.fusion is not None:
            # The mask head was trained on prompt-fused features; given boxes name no prompt.
            raise ValueError(
                "LanguageAwareRCNN.inference(detected_instances=...) with "
                "MODEL.LANGUAGE_ROI_HEADS.DEEP_FUSION would run the mask head on unfused "
                "features it never saw in training; call the model on the inputs instead."
            )
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        if detected_instances is not None:
            detected_instances = [x.to(self.device) for x in detected_instances]
            results = self.roi_heads.forward_with_given_boxes(features, detected_instances)
        elif self.fusion is None:
            prompts, num_labels = [], []
            for x in batched_inputs:
                p, n = self._prompts_for(x)
                prompts.append([self._encoded(*self._prompt_text(*c)) for c in p])
                num_labels.append(n)
            text = RegionTextInputs(prompts=prompts, num_labels=num_labels)
            proposals = self._proposals(images, features, batched_inputs, text)
            results, _ = self.roi_heads(images, features, proposals, None, text=text)
        else:
            results = [
                self._fused_inference_single(images, features, batched_inputs, i)
                for i in range(len(batched_inputs))
            ]
        if do_postprocess:
            return GeneralizedRCNN._postprocess(results, batched_inputs, images.image_sizes)
        return results

    @staticmethod
    def _encoded(ids, lang, pmap, label_ids, tokens=None) -> EncodedPrompt:
        return EncodedPrompt(
            tokens=lang["embedded"][0] if tokens is None else tokens[0],
            mask=lang["masks"][0],
            input_ids=ids[0],
            label_map=pmap,
            label_ids=label_ids,
        )

    def _proposals(self, images, features, batched_inputs, text: Optional[RegionTextInputs] = None):
        if self.proposal_generator is not None:
            return self._run_proposal_generator(images, features, None, text)[0]
        return _precomputed_proposals(batched_inputs, self.device)

    def _run_proposal_generator(self, images, features, gt_instances, text: RegionTextInputs):
        # A prompt-reading generator (e.g. GLIPATSSProposalGenerator) gets the ROI heads' text.
        if getattr(self.proposal_generator, "takes_text", False):
            return self.proposal_generator(images, features, gt_instances, text=text)
        return self.proposal_generator(images, features, gt_instances)

    def _fused_inference_single(self, images: ImageList, features, batched_inputs, i: int):
        """One image with deep fusion: RPN + ROI heads per prompt chunk, then merged."""
        prompts, num_labels = self._prompts_for(batched_inputs[i])
        image = ImageList(images.tensor[i : i + 1], [images.image_sizes[i]])
        feats = {k: v[i : i + 1] for k, v in features.items()}
        parts = []
        for caption, spans, label_ids in prompts:
            ids, lang, pmap, labels = self._prompt_text(caption, spans, label_ids)
            fused, tokens = self._fuse(feats, lang)
            text = RegionTextInputs(
                prompts=[[self._encoded(ids, lang, pmap, labels, tokens)]], num_labels=[num_labels]
            )
            proposals = self._proposals(image, fused, batched_inputs[i : i + 1], text)
            parts.append(self.roi_heads(image, fused, proposals, None, text=text)[0][0])
        if len(parts) == 1:
            return parts[0]
        merged = Instances.cat(parts)
        predictor = self.roi_heads.box_predictor
        predictor = predictor[-1] if isinstance(predictor, nn.ModuleList) else predictor
        keep = batched_nms(
            merged.pred_boxes.tensor, merged.scores, merged.pred_classes, predictor.test_nms_thresh
        )
        if predictor.test_topk_per_image >= 0:  # Detectron2: a negative TEST.DETECTIONS_PER_IMAGE keeps all
            keep = keep[: predictor.test_topk_per_image]
        return merged[keep]
