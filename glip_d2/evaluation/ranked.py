"""`RankedPhraseEvaluator`: the shared part of the grounding evaluators (Flickr30k recall,
RefCOCO accuracy): collect each input's ranked boxes per phrase, gather them to rank 0 like
Detectron2's evaluators, and score them there."""

import itertools
import logging
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from .phrases import ranked_boxes

__all__ = ["RankedPhraseEvaluator"]

logger = logging.getLogger(__name__)


class RankedPhraseEvaluator(DatasetEvaluator):
    """Subclasses implement `_score(predictions)`; `predictions` is a list of
    ``(image_id, per-phrase ranked boxes)``, the boxes best first, at most ``max(topk)`` (all
    of them when ``topk`` has -1), one item per image id (MDETR's evaluators score a sentence /
    expression predicted twice, as with a sampler that pads the last batch, once)."""

    def __init__(
        self,
        dataset_name: str,
        topk: Sequence[int] = (1, 5, 10),
        iou_thresh: float = 0.5,
        distributed: bool = True,
    ):
        """
        Args:
            dataset_name: the registered grounding dataset evaluated.
            topk: the k's of the top-k metrics; -1 = every box (official GLIP's "upper bound").
            iou_thresh: IoU for a correct box.
            distributed: gather the predictions of all ranks to rank 0.
        """
        self._dataset_name = dataset_name
        self._topk = tuple(int(k) for k in topk)
        bad = [k for k in self._topk if k < 1 and k != -1]
        if not self._topk or bad:
            raise ValueError(
                f"TEST.BENCHMARK.GROUNDING_TOPK must be k's >= 1 or -1 (every box), got "
                f"{tuple(topk)}."
            )
        self._thresh = iou_thresh
        self._distributed = distributed

    def _num_phrases(self, inp: dict) -> int:
        """Phrases to rank boxes for: every phrase of the input."""
        return len(inp.get("phrase_spans", ()))

    def reset(self):
        self._predictions: List[Tuple[object, list]] = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            limit = None if -1 in self._topk else max(self._topk)
            boxes = ranked_boxes(out["instances"], self._num_phrases(inp), limit)
            self._predictions.append((inp["image_id"], boxes))

    def evaluate(self) -> Optional[Dict]:
        predictions = self._predictions
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return None
        unique = {}
        for image_id, boxes in predictions:
            unique.setdefault(image_id, boxes)  # the first prediction of an item counts
        if len(unique) < len(predictions):
            logger.warning(
                f"[{type(self).__name__}] {len(predictions) - len(unique)} repeated predictions "
                f"of the same image id in {self._dataset_name}; each item is scored once."
            )
            predictions = list(unique.items())
        if not predictions:
            logger.warning(f"[{type(self).__name__}] No predictions for {self._dataset_name}.")
            return {}
        return self._score(predictions)

    def _score(self, predictions) -> Dict:
        raise NotImplementedError
