"""Referring expression comprehension (RefCOCO, RefCOCO+, RefCOCOg): top-k accuracy at IoU 0.5.

Each item is one expression with one referred box (MDETR's ``finetune_refcoco*`` jsons, the
"refexp" view of :mod:`glip_d2.data.datasets.mdetr`: the expression is phrase 0). The model's
boxes for phrase 0 are ranked by score; Acc@1 is the fraction of expressions whose best box has
IoU >= 0.5 with the referred box (Acc@5 / Acc@10: one of the first 5 / 10). One registered
dataset is one split, so the numbers are per split.
"""

from collections import OrderedDict

from detectron2.data import DatasetCatalog

from .phrases import hits_at_k, phrase_boxes
from .ranked import RankedPhraseEvaluator

__all__ = ["RefExpEvaluator"]


class RefExpEvaluator(RankedPhraseEvaluator):
    """Top-k accuracy of the referred box, gathered like Detectron2's evaluators.

    Results: ``{"refexp": {"Acc@1", "Acc@5", "Acc@10"}}`` (percent).
    """

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
            for k, hit in hits_at_k(boxes[0], phrases[0], self._topk, self._thresh).items():
                correct[k] += hit
        n = len(predictions)
        return OrderedDict(
            refexp=OrderedDict((f"Acc@{k}", 100.0 * correct[k] / n) for k in self._topk)
        )
