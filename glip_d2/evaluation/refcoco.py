"""Referring expression comprehension (RefCOCO, RefCOCO+, RefCOCOg): top-k accuracy at 0.5.

Each item is one expression with one referred box (MDETR's ``finetune_refcoco*`` jsons, the
"refexp" view of :mod:`glip_d2.data.datasets.mdetr`: the expression is phrase 0). The model's
boxes for phrase 0 are ranked by score; Acc@1 is the fraction of expressions whose best box
overlaps the referred box by >= 0.5 (Acc@5 / Acc@10: one of the first 5 / 10). The overlap is
the generalized IoU by default, as MDETR's and official GLIP's RefExp evaluators (whose reported
numbers use it), or the plain IoU of the usual RefCOCO criterion (``TEST.BENCHMARK.REFCOCO_MATCH
iou``); GIoU is never above IoU, so "giou" can only count fewer. One registered dataset is one
split, so the numbers are per split.
"""

import logging
from collections import OrderedDict

from detectron2.data import DatasetCatalog

from .phrases import hits_at_k, phrase_boxes
from .ranked import RankedPhraseEvaluator

__all__ = ["RefExpEvaluator", "check_refcoco_match"]

logger = logging.getLogger(__name__)


def check_refcoco_match(match: str) -> None:
    """Raise ValueError unless ``match`` (TEST.BENCHMARK.REFCOCO_MATCH) is "giou" or "iou"."""
    if match not in ("giou", "iou"):
        raise ValueError(f"TEST.BENCHMARK.REFCOCO_MATCH must be 'giou' or 'iou', got {match!r}.")


class RefExpEvaluator(RankedPhraseEvaluator):
    """Top-k accuracy of the referred box, gathered like Detectron2's evaluators.

    Results: ``{"refexp": {"Acc@1", "Acc@5", "Acc@10"}}`` (percent).
    """

    def __init__(self, dataset_name: str, *args, match: str = "giou", **kwargs):
        """``match``: "giou" (MDETR's and official GLIP's evaluator) or "iou"; other arguments
        as :class:`RankedPhraseEvaluator`."""
        check_refcoco_match(match)
        super().__init__(dataset_name, *args, **kwargs)
        self._match = match

    def _num_phrases(self, inp: dict) -> int:
        return 1  # the expression is phrase 0

    def _score(self, predictions):
        records = {r["image_id"]: r for r in DatasetCatalog.get(self._dataset_name)}
        correct = {k: 0 for k in self._topk}
        for image_id, boxes in predictions:
            phrases = phrase_boxes(records[image_id])
            if not phrases:
                raise ValueError(
                    f"Expression {image_id!r} of {self._dataset_name} has no referred box."
                )
            hits = hits_at_k(boxes[0], phrases[0], self._topk, self._thresh, overlap=self._match)
            for k, hit in hits.items():
                correct[k] += hit
        n = len(predictions)
        if n < len(records):  # the official evaluator raises; a deliberate subset is its own dataset
            logger.warning(
                f"[RefExpEvaluator] {self._dataset_name}: scored {n} of its {len(records)} "
                "expressions, the ones predicted; the accuracy is over those only."
            )
        return OrderedDict(
            refexp=OrderedDict((f"Acc@{k}", 100.0 * correct[k] / n) for k in self._topk)
        )
