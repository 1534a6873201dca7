"""The teacher side of self-training: ground a caption's noun phrases in its image."""

import logging
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from torch import nn

from ..data.datasets.caption_collection import CaptionRecord, resolve_image_path
from ..nlp import find_noun_phrases, resolve_backend
from ..text import span_to_token_range, tokenize

__all__ = ["GroundingTeacher"]

logger = logging.getLogger(__name__)


class GroundingTeacher:
    """Runs a grounding model (the `GLIP` or `LanguageAwareRCNN` meta-architecture: any model
    taking inputs with "caption" + "phrase_spans") on one image-caption pair.

    Args:
        model: the teacher, in eval mode, with `tokenizer` and `max_query_len` attributes.
        min_size, max_size: test-time resize (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST).
        input_format: image format the model expects (INPUT.FORMAT).
        score_thresh: keep boxes whose phrase score is at least this, in [0, 1].
        max_boxes_per_phrase: at most this many boxes per phrase, best first (<= 0: no limit).
        nlp_backend: noun-phrase extractor of `glip_d2.nlp` ("auto", "spacy", "simple"); "auto"
            is resolved here to the one this machine has, so the run's settings record which one
            extracted the phrases (a shard or resume without spaCy is refused, not mixed in).
        weights: which weights the model holds ("ema": the checkpoint's weight average,
            "model": its raw weights, "random"; None: not said), recorded in the run's settings
            so that a resume with other weights is refused.
        weights_sha256: SHA-256 of the checkpoint file the weights came from (None: not known),
            recorded with the run's settings too: a checkpoint retrained in place (same path)
            must not label the rest of a run that an older one started.
        config_sha256: SHA-256 of the model's merged config (None: not known), recorded with the
            run's settings for the same reason: a config file edited between shards.

    The model's own test threshold (``ROI_HEADS.SCORE_THRESH_TEST``, ``ATSS.INFERENCE_TH``)
    applies first: `score_thresh` below it keeps nothing more (warned here; ``build_teacher``
    lowers it).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        min_size: int = 800,
        max_size: int = 1333,
        input_format: str = "BGR",
        score_thresh: float = 0.5,
        max_boxes_per_phrase: int = 3,
        nlp_backend: str = "auto",
        weights: Optional[str] = None,
        weights_sha256: Optional[str] = None,
        config_sha256: Optional[str] = None,
    ):
        self.model = model.eval()
        self.aug = T.ResizeShortestEdge([min_size, min_size], max_size)
        self.input_format = input_format
        if not 0.0 <= score_thresh <= 1.0:  # the range of the scores
            raise ValueError(f"score_thresh {score_thresh} is outside [0, 1].")
        self.score_thresh = score_thresh
        self.max_boxes_per_phrase = max_boxes_per_phrase
        self.nlp_backend = resolve_backend(nlp_backend)
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.config_sha256 = config_sha256
        _warn_on_higher_model_thresholds(self.model, score_thresh)

    def phrases(self, caption: str) -> Tuple[List[Tuple[str, Tuple[int, int]]], int]:
        """Noun phrases of the caption that fit the model's token budget, and how many did not."""
        found = [(p.text, tuple(p.span)) for p in find_noun_phrases(caption, self.nlp_backend)]
        if not found:
            return [], 0
        tok = tokenize(
            self.model.tokenizer, [caption], max_length=self.model.max_query_len, pad_to_max=False
        )
        kept = []
        for text, span in found:
            r = span_to_token_range(tok, span)
            if r is not None and r[0] <= r[1] < self.model.max_query_len:
                kept.append((text, span))
        return kept, len(found) - len(kept)

    @torch.no_grad()
    def __call__(self, record: CaptionRecord, image_root: Optional[str] = None) -> Dict:
        """Ground one record.

        Returns:
            {"id", "file_name", "height", "width", "caption", "phrases": [{"text", "span"}],
            "boxes": [{"phrase", "bbox" (XYWH, original pixels), "score"}]} with boxes in
            phrase order, best first within a phrase; values rounded so reruns write the same
            bytes.
        """
        path = resolve_image_path(record.file_name, image_root)
        try:
            image = utils.read_image(path, format=self.input_format)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(
                f"Cannot read image {path!r} of record id {record.image_id} ({e}); fix the "
                "collection or --image-root and rerun (finished parts are kept)."
            ) from e
        height, width = image.shape[:2]
        phrases, dropped = self.phrases(record.caption)
        if dropped:
            logger.info(f"Image {record.image_id}: {dropped} phrases past the token limit dropped.")
        result = {
            "id": record.image_id,
            "file_name": record.file_name,
            "height": height,
            "width": width,
            "caption": record.caption,
            "phrases": [{"text": t, "span": list(s)} for t, s in phrases],
            "boxes": [],
        }
        if not phrases:
            return result
        resized = self.aug.get_transform(image).apply_image(image)
        inputs = {
            "image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
            "height": height,
            "width": width,
            "caption": record.caption,
            "phrase_spans": [[list(s)] for _, s in phrases],
        }
        inst = self.model([inputs])[0]["instances"].to("cpu")
        boxes = inst.pred_boxes.tensor
        for k in range(len(phrases)):
            idx = (inst.pred_classes == k).nonzero().flatten()
            idx = idx[inst.scores[idx].argsort(descending=True)]
            idx = idx[inst.scores[idx] >= self.score_thresh]
            if self.max_boxes_per_phrase > 0:
                idx = idx[: self.max_boxes_per_phrase]
            for i in idx.tolist():
                x0, y0, x1, y1 = boxes[i].tolist()
                if x1 <= x0 or y1 <= y0:
                    continue
                result["boxes"].append(
                    {
                        "phrase": k,
                        "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                        "score": round(float(inst.scores[i]), 4),
                    }
                )
        return result


def _warn_on_higher_model_thresholds(model: nn.Module, score_thresh: float) -> List[str]:
    """Warn (and return the config keys) when the model's own test threshold drops boxes the
    teacher's `score_thresh` would keep: the two-stage ROI heads' score threshold, or GLIP's
    label-probability threshold p (its score is sqrt(p x centerness), so a score s needs
    p >= s^2)."""
    higher = []
    head = getattr(model, "head", None)
    if score_thresh**2 < getattr(head, "test_args", {}).get("score_thresh", 0.0):
        higher.append("MODEL.ATSS.INFERENCE_TH")
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    if isinstance(predictor, nn.ModuleList):  # cascade: the last stage scores the boxes
        predictor = predictor[-1]
    if score_thresh < getattr(predictor, "test_score_thresh", 0.0):
        higher.append("MODEL.ROI_HEADS.SCORE_THRESH_TEST")
    if higher:
        logger.warning(
            f"Teacher score_thresh {score_thresh} is below the model's own "
            f"{' and '.join(higher)} (compared with score_thresh^2 for ATSS.INFERENCE_TH): the "
            "model drops those boxes before the teacher sees them. Build the model with the "
            "threshold lowered (glip_d2.pseudo_label.build_teacher does)."
        )
    return higher
