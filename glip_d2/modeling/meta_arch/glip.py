"""GLIP meta-architecture: image backbone + language backbone + fusion tower + grounding head."""
import contextlib
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

from ...device import CPUFallbackMixin
from ...text import load_tokenizer, tokenize
from ..fusion import check_pyramid_levels
from ..heads import GLIPATSSHead, box_coder, class_wise_nms
from ..heads.itc import ImageTextContrastiveHead
from ..heads.itm import ImageTextMatchingHead, hard_negatives, shifted_negatives
from ..heads.losses import check_loss_weight
from ..heads.mask_head import GLIPMaskHead
from ..heads.mlm import MLMHead, mask_tokens, maskable_tokens
from ..heads.text_box import build_text_box_head, cxcywh_to_xyxy, xyxy_to_cxcywh
from ..language import build_language_backbone, resolve_text_model_path
from ..tuning import LINEAR_PREFIXES, PromptTuning, apply_tuning
from .prompting import PromptingMixin, default_vocabulary

logger = logging.getLogger(__name__)

# MODEL.GLIP.COMPILE values: "" = eager; else a torch.compile mode ("reduce-overhead" adds CUDA
# graphs, worth it for fixed input shapes).
COMPILE_MODES = ("", "default", "reduce-overhead", "max-autotune")
# MODEL.GLIP.INFERENCE_DTYPE -> autocast dtype (None: no autocast).
INFERENCE_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def stack_prompts(encoded):
    """Batch encoded prompts [(input_ids, language dict, positive map)] along the batch axis.

    Prompts shorter than the longest are right-padded (hidden/embedded zeros, mask 0, no label
    on the padded tokens), which the masked attention and the positive maps ignore.

    Returns:
        (language dict with (P, T, ...) tensors, list of P positive maps (L_p, T)).
    """
    if len(encoded) == 1:
        _, lang, pmap = encoded[0]
        return lang, [pmap]
    length = max(lang["masks"].shape[1] for _, lang, _ in encoded)

    def pad(t):  # right-pad the token axis (dim 1) to `length`
        extra = length - t.shape[1]
        return F.pad(t, (0, 0, 0, extra) if t.dim() == 3 else (0, extra))

    lang = {key: torch.cat([pad(e[1][key]) for e in encoded]) for key in encoded[0][1]}
    pmaps = [F.pad(pmap, (0, length - pmap.shape[1])) for _, _, pmap in encoded]
    return lang, pmaps


def _to_float(out: Dict) -> Dict:
    """Head outputs in float32 for post-processing (a no-op after a float32 forward)."""

    def cast(t):
        return t.float() if torch.is_tensor(t) and t.is_floating_point() else t

    return {k: [cast(t) for t in v] if isinstance(v, list) else cast(v) for k, v in out.items()}


# MODEL.GLIP.LOSSES keys that weight a loss (0 = off).
LOSS_WEIGHT_KEYS = ("CONTRASTIVE_WEIGHT", "MLM_WEIGHT", "ITC_WEIGHT", "ITM_WEIGHT")
# Heads whose loss is switched on by a config key, and that key (for the linear-probe check).
LOSS_HEAD_KEYS = {
    "mlm_head": "MODEL.GLIP.LOSSES.MLM_WEIGHT",
    "itc_head": "MODEL.GLIP.LOSSES.ITC_WEIGHT",
    "itm_head": "MODEL.GLIP.LOSSES.ITM_WEIGHT",
    "text_box_head": "MODEL.GLIP.TEXT_BOX_HEAD.NAME",
}


def check_loss_weights(cfg) -> None:
    """Each MODEL.GLIP.LOSSES weight must be a finite number >= 0.

    Raises:
        ValueError: naming the key (before: a negative or NaN weight turned its loss off
            silently, since the heads are built for weights > 0, and inf made every loss inf).
    """
    for key in LOSS_WEIGHT_KEYS:
        check_loss_weight(f"MODEL.GLIP.LOSSES.{key}", cfg.MODEL.GLIP.LOSSES[key],
                          "it multiplies its loss, and 0 turns the loss off (docs/glipv2_xvlm.md).")


def _last_linear_prefix(module: Optional[nn.Module], name: str) -> Tuple[str, ...]:
    """The parameter prefix of ``module``'s last linear layer (registration order), as
    ``name.<path>.``; () without a module or a linear layer."""
    if module is None:
        return ()
    linear = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    return (f"{name}.{linear[-1]}.",) if linear else ()


def _alignment_heads(cfg, backbone, language_dim: int) -> Dict[str, Optional[nn.Module]]:
    """X-VLM's ITC and ITM heads of MODEL.GLIP.LOSSES (None where the weight is 0)."""
    losses = cfg.MODEL.GLIP.LOSSES
    itc = itm = None
    if losses.ITC_WEIGHT > 0:
        itc = ImageTextContrastiveHead(cfg, backbone.output_shape(), language_dim)
    if losses.ITM_WEIGHT > 0:
        if not cfg.MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON:
            raise ValueError(
                "MODEL.GLIP.LOSSES.ITM_WEIGHT > 0 classifies the fused [CLS] token, but "
                "MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON is False (the tower does not fuse the "
                "text with the image): turn fusion on or set ITM_WEIGHT 0."
            )
        if losses.ITM_NEGATIVES == "hard" and itc is None:
            raise ValueError(
                "MODEL.GLIP.LOSSES.ITM_NEGATIVES 'hard' samples negatives by ITC similarity: set "
                "ITC_WEIGHT > 0 too, or use ITM_NEGATIVES 'shift'."
            )
        itm = ImageTextMatchingHead(language_dim, losses.ITM_NEGATIVES, losses.ITM_WEIGHT)
    return {"itc_head": itc, "itm_head": itm}


def check_feature_strides(cfg, shapes) -> None:
    """The one-stage head reads ``MODEL.GLIP.IN_FEATURES`` through the VL-DyHead tower (which
    needs consecutive levels, finest first) and places its anchors at
    ``MODEL.ATSS.ANCHOR_STRIDES``, which must be those features' strides.

    Raises:
        ValueError: levels out of order or with a gap (before: a size mismatch at the first
            forward), levels of another width than MODEL.DYHEAD.CHANNELS (before: a LayerNorm
            shape error at the first forward), or anchor strides that are not the features'
            (before: accepted silently, with every anchor at the wrong place, e.g. twice its
            position on a P2-P6 backbone).
    """
    names = list(cfg.MODEL.GLIP.IN_FEATURES)
    strides = [int(shapes[f].stride) for f in names]
    check_pyramid_levels("MODEL.GLIP.IN_FEATURES", names, strides)
    width = cfg.MODEL.DYHEAD.CHANNELS
    wrong_width = {f: shapes[f].channels for f in names if shapes[f].channels != width}
    if wrong_width:
        raise ValueError(
            f"MODEL.GLIP.IN_FEATURES {wrong_width} (name: channels) of {cfg.MODEL.BACKBONE.NAME} "
            f"do not have MODEL.DYHEAD.CHANNELS = {width} channels: the head "
            "reads one width at every level. Set DYHEAD.CHANNELS to MODEL.FPN.OUT_CHANNELS (a "
            "backbone without an FPN cannot feed the head)."
        )
    anchor_strides = [int(s) for s in cfg.MODEL.ATSS.ANCHOR_STRIDES]
    if anchor_strides != strides:
        raise ValueError(
            f"MODEL.ATSS.ANCHOR_STRIDES {anchor_strides} disagree with the strides {strides} of "
            f"MODEL.GLIP.IN_FEATURES {names} ({cfg.MODEL.BACKBONE.NAME}): the anchors would sit "
            f"at the wrong places. Set MODEL.ATSS.ANCHOR_STRIDES to {strides} (and "
            f"ANCHOR_SIZES to e.g. {[8 * s for s in strides]}, 8 strides as in ATSS)."
        )


@META_ARCH_REGISTRY.register()
class GLIP(CPUFallbackMixin, PromptingMixin, nn.Module):
    """Detection as phrase grounding.

    Training inputs carry "caption" and instances with `gt_positive_map` (from
    `GroundingDatasetMapper`). At test time an input may carry "caption" and "phrase_spans"
    (list of [start, end) char spans per phrase) for grounding; otherwise the model detects the
    names of its vocabulary (`set_vocabulary`, MODEL.GLIP.VOCABULARY, or the thing_classes of
    DATASETS.TEST[0]), chunked into prompts that fit the token limit. `pred_classes` are
    indices into the vocabulary (or phrase indices), so Detectron2's evaluators work unchanged.
    """

    # its mask head trains the images without masks of a mixed batch on boxes only (read by the
    # data side's checks, glip_d2/data/build.py, without importing the model)
    trains_box_only_images = True

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        language_backbone: nn.Module,
        head: GLIPATSSHead,
        tokenizer,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        in_features: Sequence[str] = ("p3", "p4", "p5", "p6", "p7"),
        size_divisibility: int = 32,
        max_query_len: int = 256,
        pad_to_max: bool = True,
        separator: str = ". ",
        vocabulary: Optional[Sequence[str]] = None,
        test_chunk_size: int = 0,
        freeze_backbone: bool = False,
        inference_batch: int = 1,
        inference_dtype: str = "float32",
        compile_mode: str = "",
        tuning: str = "full",
        text_dropout_when_frozen: bool = False,
        mlm_head: Optional[nn.Module] = None,
        mlm_weight: float = 0.0,
        mlm_probability: float = 0.15,
        mask_head: Optional[nn.Module] = None,
        text_box_head: Optional[nn.Module] = None,
        text_box_predict: bool = False,
        text_box_detach: bool = False,
        itc_head: Optional[ImageTextContrastiveHead] = None,
        itm_head: Optional[ImageTextMatchingHead] = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.language_backbone = language_backbone
        self.head = head
        self.tokenizer = tokenizer
        self.in_features = list(in_features)
        self.size_divisibility = size_divisibility
        self.max_query_len = max_query_len
        self.pad_to_max = pad_to_max
        self.separator = separator
        self.test_chunk_size = test_chunk_size
        if inference_batch < 1:
            raise ValueError(f"MODEL.GLIP.INFERENCE_BATCH must be >= 1, got {inference_batch}.")
        if inference_dtype not in INFERENCE_DTYPES:
            raise ValueError(
                f"MODEL.GLIP.INFERENCE_DTYPE {inference_dtype!r} is not one of "
                f"{sorted(INFERENCE_DTYPES)}."
            )
        self.inference_batch = inference_batch
        self.inference_dtype = inference_dtype
        # torch.compile'd backbone and head for inference, kept outside the module tree so the
        # state dict keeps its keys; built on first use (MODEL.GLIP.COMPILE).
        if compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"MODEL.GLIP.COMPILE {compile_mode!r} is not one of {COMPILE_MODES} ('' = off)."
            )
        self.compile_mode = compile_mode
        self._compiled: Dict[str, object] = {}
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        # GLIPv2 masked language modelling (None = off); outside `head`, so official checkpoints
        # load with its weights reported missing.
        self.mlm_head = mlm_head
        if mlm_head is not None and not 0 < mlm_probability <= 1:  # NaN fails too
            raise ValueError(
                f"MODEL.GLIP.LOSSES.MLM_PROBABILITY {mlm_probability} is not a probability in "
                "(0, 1]: it is the share of prompt tokens masked for the MLM loss (BERT's 0.15); "
                "MODEL.GLIP.LOSSES.MLM_WEIGHT 0 turns the loss off."
            )
        self.mlm_weight, self.mlm_probability = mlm_weight, mlm_probability
        # One-stage mask head (MODEL.MASK_ON; None = off), also outside `head`.
        self.mask_head = mask_head
        # X-VLM text-to-box head (MODEL.GLIP.TEXT_BOX_HEAD; None = off), also outside `head`.
        self.text_box_head = text_box_head
        self.text_box_predict = text_box_predict and text_box_head is not None
        self.text_box_detach = text_box_detach  # the head's loss stops at the tower's features
        # X-VLM image/region-text contrastive and image-text matching losses (MODEL.GLIP.LOSSES
        # ITC_WEIGHT / ITM_WEIGHT; None = off), also outside `head`.
        self.itc_head, self.itm_head = itc_head, itm_head
        self._init_prompting(vocabulary)
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        # MODEL.GLIP.TUNING: which parameters adapt to a new task (glip_d2/modeling/tuning.py).
        self.tuning = tuning
        self.prompt_tuning = None
        if tuning == "prompt":
            self.prompt_tuning = PromptTuning(max_query_len, language_backbone.language_dim)
            if mlm_head is not None:  # its masked prompts would bypass the one tuned prompt
                logger.info("Prompt tuning: the MLM loss is off (MLM_WEIGHT is ignored).")
        # a linear probe trains the text-to-box head's last layer too, as the mask head's: frozen
        # whole, a new head would never learn (and PREDICT would answer with its random boxes)
        linear = LINEAR_PREFIXES + _last_linear_prefix(text_box_head, "text_box_head")
        self._frozen_modules = apply_tuning(self, tuning, linear)
        if tuning == "linear":
            self._check_linear_probe_losses()
        if text_dropout_when_frozen and tuning == "full":  # LANGUAGE_BACKBONE.DROPOUT_WHEN_FROZEN
            self._frozen_modules = [m for m in self._frozen_modules if m != "language_backbone"
                                    and not m.startswith("language_backbone.")]

    def _check_linear_probe_losses(self) -> None:
        """Under TUNING linear, a loss whose head has no trainable parameter would train nothing:
        MLM, ITC and ITM reach none of the layers a linear probe trains.

        Raises:
            ValueError: naming the keys to turn off (before: their losses were computed every
                step, logged, and trained nothing).
        """
        dead = [
            key for name, key in LOSS_HEAD_KEYS.items()
            if getattr(self, name) is not None
            and not any(p.requires_grad for p in getattr(self, name).parameters())
        ]
        if dead:
            raise ValueError(
                f"MODEL.GLIP.TUNING 'linear' freezes every parameter that {', '.join(dead)} would "
                "train (a linear probe trains only the final layers of the grounding, mask and "
                "text-to-box heads), so those losses would train nothing: set them to 0 (NAME "
                "'') for a linear probe, or use TUNING 'full' or 'language_frozen'."
            )

    @classmethod
    def from_config(cls, cfg):
        lb = cfg.MODEL.LANGUAGE_BACKBONE
        check_loss_weights(cfg)
        backbone = build_backbone(cfg)
        language_backbone = build_language_backbone(cfg)
        missing = [f for f in cfg.MODEL.GLIP.IN_FEATURES if f not in backbone.output_shape()]
        if missing:
            raise ValueError(
                f"MODEL.GLIP.IN_FEATURES {missing} are not produced by backbone "
                f"{cfg.MODEL.BACKBONE.NAME} (it gives {list(backbone.output_shape())})"
            )
        check_feature_strides(cfg, backbone.output_shape())
        head = GLIPATSSHead(cfg, language_dim=language_backbone.language_dim)
        tok_name = lb.TOKENIZER_TYPE or lb.MODEL_TYPE
        tokenizer = load_tokenizer(resolve_text_model_path(tok_name))
        losses = cfg.MODEL.GLIP.LOSSES
        mlm_head = None
        if losses.MLM_WEIGHT > 0:
            config = getattr(getattr(language_backbone, "model", None), "config", None)
            vocab = getattr(config, "vocab_size", None) or len(tokenizer)
            mlm_head = MLMHead(language_backbone.language_dim, vocab)
        return dict(
            backbone=backbone,
            language_backbone=language_backbone,
            head=head,
            tokenizer=tokenizer,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            in_features=cfg.MODEL.GLIP.IN_FEATURES,
            size_divisibility=cfg.MODEL.GLIP.SIZE_DIVISIBILITY,
            max_query_len=lb.MAX_QUERY_LEN,
            pad_to_max=lb.PAD_MAX,
            separator=cfg.INPUT.GROUNDING.SEPARATION_TOKENS,
            vocabulary=default_vocabulary(cfg),
            test_chunk_size=cfg.MODEL.GLIP.TEST_CHUNK_SIZE,
            freeze_backbone=cfg.MODEL.GLIP.FREEZE_BACKBONE,
            inference_batch=cfg.MODEL.GLIP.INFERENCE_BATCH,
            inference_dtype=cfg.MODEL.GLIP.INFERENCE_DTYPE,
            compile_mode=cfg.MODEL.GLIP.COMPILE,
            tuning=cfg.MODEL.GLIP.TUNING,
            text_dropout_when_frozen=lb.DROPOUT_WHEN_FROZEN,
            mlm_head=mlm_head,
            mlm_weight=losses.MLM_WEIGHT,
            mlm_probability=losses.MLM_PROBABILITY,
            mask_head=GLIPMaskHead(cfg) if cfg.MODEL.MASK_ON else None,
            text_box_head=build_text_box_head(cfg, language_backbone.language_dim),
            text_box_predict=cfg.MODEL.GLIP.TEXT_BOX_HEAD.PREDICT,
            text_box_detach=cfg.MODEL.GLIP.TEXT_BOX_HEAD.DETACH,
            # built last: switching them on leaves every other module's initialisation unchanged
            **_alignment_heads(cfg, backbone, language_backbone.language_dim),
        )

    @property
    def device(self):
        return self.pixel_mean.device

    def train(self, mode: bool = True):
        """Modules a tuning mode froze stay in eval mode (no dropout), as in the official code."""
        super().train(mode)
        if mode:
            for name in getattr(self, "_frozen_modules", ()):
                self.get_submodule(name).eval()
        return self

    # ------------------------------------------------------------------ forward
    def _pad_multiple(self) -> int:
        """What the batch is padded to a multiple of: MODEL.GLIP.SIZE_DIVISIBILITY and what the
        backbone needs (Detectron2's stock FPN adds the features of two levels, so it needs its
        coarsest stride; the Swin FPN takes any size), their least common multiple."""
        own = self.size_divisibility
        backbone = int(getattr(self.backbone, "size_divisibility", 0) or 0)
        if own > 0 and backbone > 0:
            return math.lcm(own, backbone)
        return own or backbone

    def preprocess_image(self, batched_inputs) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self._pad_multiple(), padding_constraints=getattr(
            self.backbone, "padding_constraints", None))

    def extract_features(self, images: ImageList) -> List[torch.Tensor]:
        feats = self._inference_module("backbone")(images.tensor)
        return [feats[f] for f in self.in_features]

    def _inference_module(self, name: str):
        """`self.<name>`, or its torch.compile'd twin at test time when MODEL.GLIP.COMPILE is set."""
        module = getattr(self, name)
        if self.training or not self.compile_mode:
            return module
        if name not in self._compiled:
            self._compiled[name] = torch.compile(module, mode=self.compile_mode)
        return self._compiled[name]

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        self._check_training_inputs(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        feats = self.extract_features(images)
        inst = [x["instances"].to(self.device) for x in batched_inputs]
        captions = [x["caption"] for x in batched_inputs]
        mlm = self.mlm_head is not None and self.prompt_tuning is None
        if mlm:
            lang, mlm_labels = self.encode_masked_text(captions, [i.gt_positive_map for i in inst])
        else:
            _, lang = self.encode_text(captions)
        out = self.head(feats, lang)
        losses = self.head.losses(
            out, [i.gt_boxes.tensor for i in inst], [i.gt_positive_map for i in inst],
            phrase_maps=[x.get("phrase_map") for x in batched_inputs],
        )
        if mlm:
            losses["loss_mlm"] = self.mlm_weight * self.mlm_head.loss(out["text"], mlm_labels)
        if self.mask_head is not None:
            # images without masks (e.g. referring expressions mixed in) do not train it
            losses.update(self.mask_head.losses(out["visual"], inst))
        if self.text_box_head is not None:
            losses.update(self._text_box_losses(out, inst, images.image_sizes))
        if self.itc_head is not None or self.itm_head is not None:
            losses.update(
                self._alignment_losses(batched_inputs, feats, lang, out, inst, images.image_sizes)
            )
        return losses

    def _alignment_losses(self, batched_inputs, feats, lang, out, inst, image_sizes):
        """X-VLM's ITC and ITM (docs/glipv2_xvlm.md) on the inputs whose prompt is their
        dataset's caption or referring expression: those the mapper gave "phrase_spans" (it does
        for every record that brings a "caption"; a detection record's all-class-names prompt is
        built by the mapper, gets none and stays out, since every image would share it)."""
        rows = [k for k, x in enumerate(batched_inputs) if "phrase_spans" in x]
        captions = [x["caption"] for x in batched_inputs]
        losses, embeddings = {}, None
        if self.itc_head is not None:
            # a caption with exactly one box names that box (as for the text-to-box head)
            one_box = {k: inst[k].gt_boxes.tensor[0] for k in rows if len(inst[k]) == 1}
            itc, embeddings = self.itc_head.losses(
                feats, lang["hidden"][:, 0], image_sizes, captions, rows, one_box
            )
            losses.update(itc)
        if self.itm_head is not None:
            losses["loss_itm"] = self._itm_loss(
                feats, lang, out["text"], captions, rows, embeddings
            )
        return losses

    def _itm_loss(self, feats, lang, fused_text, captions, rows, embeddings=None):
        """Image-text matching: the grounding pass's own pairs are the matched ones; each caption
        input's image also meets one other caption in a second fusion-tower pass."""
        texts = [captions[k] for k in rows]
        if self.itm_head.negatives == "hard":
            image_emb, text_emb = embeddings
            similarity = image_emb @ text_emb.t() / self.itc_head.temperature.detach()
            picks = hard_negatives(similarity, texts)
        else:
            picks = shifted_negatives(texts)
        pairs = [(rows[i], rows[j]) for i, j in enumerate(picks) if j is not None]
        positive = fused_text[torch.as_tensor(rows, dtype=torch.long, device=self.device), 0]
        if not pairs:
            if not getattr(self, "_warned_no_itm_pair", False):  # once per model
                self._warned_no_itm_pair = True
                logger.warning(
                    "MODEL.GLIP.LOSSES.ITM_WEIGHT: a batch had no mismatched pair (it needs two "
                    "different captions among a worker's images), so loss_itm is 0 there; with "
                    "one caption image per worker ITM trains nothing (docs/glipv2_xvlm.md)."
                )
            return self.itm_head.loss(positive, positive[:0])
        image = torch.as_tensor([i for i, _ in pairs], device=self.device)
        text = torch.as_tensor([t for _, t in pairs], device=self.device)
        # the tower is the cross-modal encoder; backbone and text encoder outputs are reused
        _, mismatched = self.head.tower(
            [f[image] for f in feats], lang["hidden"][text], lang["masks"][text]
        )
        return self.itm_head.loss(positive, mismatched[:, 0])

    def _text_box_losses(self, out: Dict, inst: List[Instances], image_sizes):
        """X-VLM box losses on the images with exactly one ground-truth box (the caption is then
        taken to describe that box, as a referring expression does). With ``text_box_detach``
        the losses train the head only, not the fusion tower and encoders it reads."""
        visual, text = out["visual"], out["text"]
        if self.text_box_detach:
            visual, text = [v.detach() for v in visual], text.detach()
        pred = self.text_box_head(visual, text, out["text_mask"], image_sizes)
        keep = [k for k, i in enumerate(inst) if len(i) == 1]
        if not keep:
            return self.text_box_head.losses(pred[:0], pred[:0].detach())
        scale = torch.tensor([[w, h, w, h] for h, w in (image_sizes[k] for k in keep)],
                             dtype=torch.float32, device=self.device)
        target = xyxy_to_cxcywh(torch.cat([inst[k].gt_boxes.tensor for k in keep]).float() / scale)
        return self.text_box_head.losses(pred[keep], target)

    def encode_masked_text(self, captions: Sequence[str], positive_maps: Sequence[torch.Tensor],
                           generator: Optional[torch.Generator] = None):
        """Tokenize, mask for MLM the tokens no ground-truth box is matched to (never special
        tokens), and run the language backbone on the masked prompts.

        Returns:
            (language dict, (B, T) MLM labels: original ids at masked tokens, -100 elsewhere).
        """
        tok = tokenize(self.tokenizer, captions, max_length=self.max_query_len, pad_to_max=self.pad_to_max)
        ids = tok["input_ids"].to(self.device)
        mask = tok["attention_mask"].to(self.device)
        positive = torch.zeros_like(ids, dtype=torch.bool)
        for b, pmap in enumerate(positive_maps):
            w = min(ids.shape[1], pmap.shape[1])
            positive[b, :w] = pmap[:, :w].any(dim=0)
        maskable = maskable_tokens(ids, mask, positive, self.tokenizer.all_special_ids)
        masked, labels = mask_tokens(
            ids, maskable, self.tokenizer.mask_token_id, self.mlm_head.decoder.out_features,
            self.mlm_probability, generator,
        )
        return self.language_backbone(masked, mask), labels

    def inference(self, batched_inputs: List[Dict], do_postprocess: bool = True):
        """Detections for each input. The image backbone runs once per image, the text side once
        per prompt (cached), and the fusion tower + head once per (image, prompt chunk) pair, up
        to `inference_batch` pairs in one pass (1 = one at a time, the official order). With
        `text_box_predict` an input carrying a caption is answered with the text-to-box head's
        box for that caption (without "phrase_spans", the whole caption is the one phrase)."""
        images = self.preprocess_image(batched_inputs)
        with self._autocast():
            feats = self.extract_features(images)
        jobs = []  # (image index, (caption, spans per label, label ids))
        for i, x in enumerate(batched_inputs):
            if self.text_box_predict and "caption" in x and "phrase_spans" not in x:
                # the head answers the caption itself, so the caption is the prompt (one phrase)
                x = {**x, "phrase_spans": [[0, len(x["caption"])]]}
            prompts, _ = self._prompts_for(x)
            jobs += [(i, p) for p in prompts]
        parts: List[List[Dict]] = [[] for _ in batched_inputs]
        # fused levels of each (image, chunk) pair, for the mask head
        fused: List[List[List[torch.Tensor]]] = [[] for _ in batched_inputs]
        text_boxes: Dict[int, torch.Tensor] = {}  # image -> (4,) xyxy box of the text-to-box head
        for start in range(0, len(jobs), self.inference_batch):
            group = jobs[start : start + self.inference_batch]
            index = [i for i, _ in group]
            if len(group) == 1:
                f = [feat[index[0] : index[0] + 1] for feat in feats]
            else:
                f = [feat[torch.as_tensor(index, device=feat.device)] for feat in feats]
            lang, pmaps = stack_prompts([self._cached_prompt(c, s) for _, (c, s, _) in group])
            with self._autocast():
                out = self._inference_module("head")(f, lang)
            out = _to_float(out)
            dets = self.head.inference(
                out, pmaps, [images.image_sizes[i] for i in index], apply_nms=False
            )
            if self.text_box_predict:
                sizes = [images.image_sizes[i] for i in index]
                boxes = self.text_box_head(out["visual"], out["text"], out["text_mask"], sizes)
                for j, i in enumerate(index):
                    if "caption" in batched_inputs[i]:
                        h, w = sizes[j]
                        text_boxes[i] = cxcywh_to_xyxy(boxes[j]) * boxes.new_tensor([w, h, w, h])
            for j, ((i, (_, _, label_ids)), det) in enumerate(zip(group, dets)):
                # long even for a caption without phrases (as_tensor([]) would be float)
                ids = torch.as_tensor(label_ids, dtype=torch.long, device=self.device)
                det["labels"] = ids[det["labels"]]
                if self.mask_head is not None:
                    det["chunk"] = torch.full_like(det["labels"], len(parts[i]))
                    fused[i].append([v[j : j + 1] for v in out["visual"][: self.mask_head.num_levels]])
                parts[i].append(det)
        results = []
        for i, size in enumerate(images.image_sizes):
            det = {k: torch.cat([p[k] for p in parts[i]]) for k in parts[i][0]}
            results.append(self._to_instances(self._merge_chunks(det), size))
            if i in text_boxes:  # the text-to-box head answers for the caption
                r = Instances(size)
                r.pred_boxes = Boxes(text_boxes[i][None])
                r.scores = torch.ones(1, device=self.device)
                r.pred_classes = torch.zeros(1, dtype=torch.long, device=self.device)
                results[-1] = r
            elif self.mask_head is not None:
                self._predict_masks(results[-1], fused[i])
        if not do_postprocess:
            return results
        return [
            {"instances": detector_postprocess(r, x.get("height", s[0]), x.get("width", s[1]))}
            for r, x, s in zip(results, batched_inputs, images.image_sizes)
        ]

    def _autocast(self):
        """Mixed precision for the inference forward (MODEL.GLIP.INFERENCE_DTYPE); a no-op in
        float32. Post-processing always runs in float32."""
        if self.inference_dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=INFERENCE_DTYPES[self.inference_dtype])

    def _merge_chunks(self, det):
        """Class-wise NMS and the top detections over all chunks of one image (for one prompt
        the official per-image NMS + top-k)."""
        keep = class_wise_nms(det["boxes"], det["scores"], det["labels"], self.head.test_args["nms_thresh"])
        det = {k: v[keep] for k, v in det.items()}
        top = self.head.test_args["detections_per_img"]
        if det["scores"].numel() > top > 0:
            kth = torch.kthvalue(det["scores"].cpu().float(), det["scores"].numel() - top + 1)[0]
            keep = det["scores"] >= kth.item()
            det = {k: v[keep] for k, v in det.items()}
        return det

    @staticmethod
    def _to_instances(det, size) -> Instances:
        order = det["scores"].argsort(descending=True)
        r = Instances(size)
        r.pred_boxes = Boxes(box_coder.from_official(det["boxes"][order]))
        r.scores = det["scores"][order]
        r.pred_classes = det["labels"][order]
        r.anchor_index = det["anchor_index"][order]
        if "chunk" in det:
            r.chunk = det["chunk"][order]
        return r

    def _predict_masks(self, r: Instances, fused: List[List[torch.Tensor]]) -> None:
        """Masks of one image's detections, each from the fused levels of the prompt chunk that
        detected it. Sets `pred_masks` (N, 1, M, M) and drops the `chunk` field."""
        masks = torch.zeros(len(r), 1, *(2 * self.mask_head.pooler.output_size[k] for k in (0, 1)),
                            device=self.device)
        for c, feats in enumerate(fused):
            sel = (r.chunk == c).nonzero()[:, 0]
            if len(sel):
                part = r[sel]
                self.mask_head.predict(feats, [part])
                masks[sel] = part.pred_masks.to(masks.dtype)
        r.remove("chunk")
        r.pred_masks = masks
