"""GLIP meta-architecture: image backbone + language backbone + fusion tower + grounding head."""
import logging
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

from ...text import load_tokenizer
from ..heads import GLIPATSSHead, box_coder, class_wise_nms
from ..language import build_language_backbone, resolve_text_model_path
from .prompting import PromptingMixin, default_vocabulary

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class GLIP(PromptingMixin, nn.Module):
    """Detection as phrase grounding.

    Training inputs carry "caption" and instances with `gt_positive_map` (from
    `GroundingDatasetMapper`). At test time an input may carry "caption" and "phrase_spans"
    (list of [start, end) char spans per phrase) for grounding; otherwise the model detects the
    names of its vocabulary (`set_vocabulary`, MODEL.GLIP.VOCABULARY, or the thing_classes of
    DATASETS.TEST[0]), chunked into prompts that fit the token limit. `pred_classes` are
    indices into the vocabulary (or phrase indices), so Detectron2's evaluators work unchanged.
    """

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
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self._init_prompting(vocabulary)
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg):
        lb = cfg.MODEL.LANGUAGE_BACKBONE
        backbone = build_backbone(cfg)
        language_backbone = build_language_backbone(cfg)
        missing = [f for f in cfg.MODEL.GLIP.IN_FEATURES if f not in backbone.output_shape()]
        if missing:
            raise ValueError(
                f"MODEL.GLIP.IN_FEATURES {missing} are not produced by backbone "
                f"{cfg.MODEL.BACKBONE.NAME} (it gives {list(backbone.output_shape())})"
            )
        head = GLIPATSSHead(cfg, language_dim=language_backbone.language_dim)
        tok_name = lb.TOKENIZER_TYPE or lb.MODEL_TYPE
        return dict(
            backbone=backbone,
            language_backbone=language_backbone,
            head=head,
            tokenizer=load_tokenizer(resolve_text_model_path(tok_name)),
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
        )

    @property
    def device(self):
        return self.pixel_mean.device

    # ------------------------------------------------------------------ forward
    def preprocess_image(self, batched_inputs) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def extract_features(self, images: ImageList) -> List[torch.Tensor]:
        feats = self.backbone(images.tensor)
        return [feats[f] for f in self.in_features]

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        self._check_training_inputs(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        feats = self.extract_features(images)
        _, lang = self.encode_text([x["caption"] for x in batched_inputs])
        out = self.head(feats, lang)
        inst = [x["instances"].to(self.device) for x in batched_inputs]
        return self.head.losses(
            out, [i.gt_boxes.tensor for i in inst], [i.gt_positive_map for i in inst]
        )

    def inference(self, batched_inputs: List[Dict], do_postprocess: bool = True):
        """Detections for each input; the image backbone runs once per image, the text side and
        the fusion tower once per prompt chunk."""
        images = self.preprocess_image(batched_inputs)
        feats = self.extract_features(images)
        results = []
        for i, x in enumerate(batched_inputs):
            f_i = [f[i : i + 1] for f in feats]
            size = images.image_sizes[i]
            prompts, _ = self._prompts_for(x)
            parts = []
            for caption, spans, label_ids in prompts:
                _, lang, pmap = self._cached_prompt(caption, spans)
                out = self.head(f_i, lang)
                det = self.head.inference(out, [pmap], [size], apply_nms=len(prompts) == 1)[0]
                det["labels"] = torch.as_tensor(label_ids, device=self.device)[det["labels"]]
                parts.append(det)
            det = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            if len(prompts) > 1:
                det = self._merge_chunks(det)
            results.append(self._to_instances(det, size))
        if not do_postprocess:
            return results
        return [
            {"instances": detector_postprocess(r, x.get("height", s[0]), x.get("width", s[1]))}
            for r, x, s in zip(results, batched_inputs, images.image_sizes)
        ]

    def _merge_chunks(self, det):
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
        return r
