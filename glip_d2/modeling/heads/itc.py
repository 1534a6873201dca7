"""X-VLM's image-text and region-text contrastive losses (ITC; Zeng et al. 2022, "Multi-Grained
Vision Language Pre-Training": texts aligned with visual concepts of several granularities).

A caption is aligned with its whole image, and a referring expression also with the one box it
names, in a shared space: the *un-fused* [CLS] feature of the text (the language backbone's, before
the fusion tower mixes in the image) against a feature pooled from the *pre-fusion* FPN levels,
so the two sides are encoded independently, as in X-VLM's dual encoders.

* Visual side: RoIAlign (Detectron2's ``ROIPooler``, ``ROIAlignV2``) of a ``pool_size`` x
  ``pool_size`` grid on the first FPN levels (P3-P5; the level is chosen by box size as in an FPN
  RoI head), flattened, so the embedding keeps the coarse layout ("left of", "small"), then one
  linear map. The image's box is the whole image (unpadded); a region's box is its ground-truth
  box. Images and regions share the projection (X-VLM's one ``vision_proj``).
* Text side: one linear map of the [CLS] feature (shared by both losses, X-VLM's ``text_proj``).
* Both are L2-normalised; the logits are cosine similarities / a learned temperature (X-VLM:
  initialised to 0.07, kept in [0.001, 0.5] by clamping the parameter before each use).
* The loss is the symmetric InfoNCE of X-VLM, 0.5 * (vision->text + text->vision cross-entropy),
  over the batch gathered from all workers: it is GLIPv2's region-word loss
  (:func:`~glip_d2.modeling.heads.contrastive.gathered_region_word_contrastive_loss`, whose
  gathering and per-worker normalisation are reused) with one "region" and one "word" per pair.
  Pairs whose texts are the same string on the same worker are positives of each other (the
  same words describe both); across workers every other pair is a negative.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from torch import nn

from .contrastive import gathered_region_word_contrastive_loss

# X-VLM keeps its learned temperature in this range.
TEMPERATURE_RANGE = (0.001, 0.5)


def same_text_positives(texts: Sequence[str], device=None) -> torch.Tensor:
    """(N, N) bool: pair i's visual side matches pair j's text when the texts are equal (the
    diagonal always)."""
    n = len(texts)  # (0, 0) when there are none: a batch whose captions name no single box
    return torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.bool, device=device).reshape(n, n)


def image_text_contrastive_loss(
    vision: torch.Tensor,
    text: torch.Tensor,
    temperature: torch.Tensor,
    positives: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Symmetric InfoNCE of paired embeddings, gathered across workers under DDP.

    Args:
        vision: (N, E) this worker's image or region embeddings; text: (N, E) their texts'
            embeddings (row k of both is pair k). Normalised here.
        temperature: scalar tensor; logits are cos(vision_i, text_j) / temperature.
        positives: (N, N) bool, True where vision i matches text j (default: the diagonal).

    Returns:
        0.5 * (vision->text + text->vision) cross-entropy, each averaged over the pairs of the
        global batch (a row with several positives is compared with the uniform distribution over
        them); with one worker exactly that loss, under DDP this worker's share of it (the mean
        over workers is the loss of the concatenated batch).
    """
    if positives is None:
        positives = torch.eye(vision.shape[0], dtype=torch.bool, device=vision.device)
    return gathered_region_word_contrastive_loss(
        F.normalize(vision.float(), dim=-1),
        F.normalize(text.float(), dim=-1),
        positives,
        temperature.reciprocal(),
    )


def _one_box_per_image(boxes: Dict[int, torch.Tensor], num_images: int, device) -> List[Boxes]:
    """The pooler's input: for each image its (4,) box from ``boxes``, or no box."""
    return [
        Boxes(boxes[k].reshape(1, 4).float() if k in boxes else torch.zeros(0, 4, device=device))
        for k in range(num_images)
    ]


class ImageTextContrastiveHead(nn.Module):
    """Projections, pooler and temperature of X-VLM's ITC; see the module docstring.

    Args:
        channels: width of the FPN levels (C); language_dim: width of the text features (D).
        strides: strides of the FPN levels pooled (the first len(strides) IN_FEATURES, powers of 2).
        embed_dim: width of the shared space (X-VLM: 256).
        temperature: initial temperature (X-VLM: 0.07).
        pool_size: side of the RoIAlign grid.
        weight: multiplies both losses.
    """

    @configurable
    def __init__(
        self,
        *,
        channels: int,
        language_dim: int,
        strides: Sequence[int] = (8, 16, 32),
        embed_dim: int = 256,
        temperature: float = 0.07,
        pool_size: int = 4,
        weight: float = 1.0,
    ):
        super().__init__()
        low, high = TEMPERATURE_RANGE
        if not low <= temperature <= high:  # NaN fails too
            raise ValueError(
                f"MODEL.GLIP.LOSSES.ITC_TEMPERATURE {temperature} is outside [{low}, {high}], the "
                "range the learned temperature is kept in (it would be clamped before the first "
                "step; X-VLM starts at 0.07)."
            )
        if embed_dim < 1:
            raise ValueError(
                f"MODEL.GLIP.LOSSES.ITC_EMBED_DIM must be >= 1 (X-VLM: 256), got {embed_dim}."
            )
        self.num_levels = len(strides)
        self.pooler = ROIPooler(
            output_size=pool_size,
            scales=[1.0 / s for s in strides],
            sampling_ratio=0,
            pooler_type="ROIAlignV2",
        )
        self.vision_proj = nn.Linear(channels * pool_size * pool_size, embed_dim)
        self.text_proj = nn.Linear(language_dim, embed_dim)
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))
        self.weight = weight

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], language_dim: int):
        levels = list(cfg.MODEL.GLIP.IN_FEATURES)[:3]  # P3-P5, like the mask head
        losses = cfg.MODEL.GLIP.LOSSES
        return dict(
            channels=input_shape[levels[0]].channels,
            language_dim=language_dim,
            strides=[input_shape[f].stride for f in levels],
            embed_dim=losses.ITC_EMBED_DIM,
            temperature=losses.ITC_TEMPERATURE,
            weight=losses.ITC_WEIGHT,
        )

    def current_temperature(self) -> torch.Tensor:
        """The temperature, first clamped in place into TEMPERATURE_RANGE (as X-VLM does, so a
        value pushed out of range comes back instead of losing its gradient)."""
        with torch.no_grad():
            self.temperature.clamp_(*TEMPERATURE_RANGE)
        return self.temperature

    def embed_boxes(self, features: List[torch.Tensor], boxes: List[Boxes]) -> torch.Tensor:
        """features: FPN levels, each (B, C, H, W); boxes: B `Boxes` (xyxy input pixels, any
        number per image). Returns (sum of boxes, E) embeddings (not normalised), image order."""
        pooled = self.pooler([f.float() for f in features[: self.num_levels]], boxes)
        return self.vision_proj(pooled.flatten(1))

    def embed_text(self, cls: torch.Tensor) -> torch.Tensor:
        """(N, D) [CLS] features -> (N, E) embeddings (not normalised)."""
        return self.text_proj(cls.float())

    def losses(
        self,
        features: List[torch.Tensor],
        text_cls: torch.Tensor,
        image_sizes: Sequence[Tuple[int, int]],
        captions: Sequence[str],
        caption_rows: Sequence[int],
        region_boxes: Dict[int, torch.Tensor],
    ) -> Tuple[Dict[str, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
        """Image-text and region-text losses of one batch.

        Args:
            features: the pre-fusion FPN levels, each (B, C, H, W).
            text_cls: (B, D) un-fused [CLS] feature of each input's prompt.
            image_sizes: (h, w) of each image inside the padded batch.
            captions: each input's prompt (equal strings are positives of each other).
            caption_rows: the inputs whose prompt is a caption / expression (the only ones that
                take part; may be empty, the collectives still run under DDP).
            region_boxes: caption row -> (4,) xyxy box the caption names (rows whose caption
                names exactly one box).

        Returns:
            ({"loss_itc_image", "loss_itc_region"} weighted, (image embeddings, text embeddings)
            of the caption rows in ascending order, normalised and detached, for ITM's hard
            negatives).
        """
        device = text_cls.device
        whole = {
            k: text_cls.new_tensor([0.0, 0.0, image_sizes[k][1], image_sizes[k][0]])
            for k in caption_rows
        }
        named = {k: region_boxes[k] for k in caption_rows if k in region_boxes}
        text = self.embed_text(text_cls)  # (B, E)
        temp = self.current_temperature()
        losses, embeddings = {}, None
        for key, boxes in (("loss_itc_image", whole), ("loss_itc_region", named)):
            rows = sorted(boxes)  # the pooler returns the boxes in image order
            vision = self.embed_boxes(features, _one_box_per_image(boxes, len(image_sizes), device))
            index = torch.as_tensor(rows, dtype=torch.long, device=device)
            positives = same_text_positives([captions[k] for k in rows], device)
            losses[key] = self.weight * image_text_contrastive_loss(
                vision, text[index], temp, positives
            )
            if embeddings is None:  # the whole images'
                embeddings = (
                    F.normalize(vision.detach(), dim=-1),
                    F.normalize(text[index].detach(), dim=-1),
                )
        return losses, embeddings
