"""Referring expression comprehension (RefCOCO, RefCOCO+, RefCOCOg): top-k accuracy at IoU 0.5.

Each item is one expression with one referred box (MDETR's ``finetune_refcoco*`` jsons, the
"refexp" view of :mod:`glip_d2.data.datasets.mdetr`: the expression is phrase 0). The model's
boxes for phrase 0 are ranked by score; Acc@1 is the fraction of expressions whose best box has
IoU >= 0.5 with the referred box (Acc@5 / Acc@10: one of the first 5 / 10). One registered
dataset is one split, so the numbers are per split.
"""

import itertools
import logging
from collections import OrderedDict
from typing import Sequence

from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from .phrases import hits_at_k, phrase_boxes, ranked_boxes

__all__ = ["RefExpEvaluator"]

logger = logging.getLogger(__name__)


class RefExpEvaluator(DatasetEvaluator):
    """Top-k accuracy of the referred box, gathered like Detectron2's evaluators.

    Results: ``{"refexp": {"Acc@1", "Acc@5", "Acc@10"}}`` (percent).
    """

    def __init__(
        self,
        dataset_name: str,
        topk: Sequence[int] = (1, 5, 10),
        iou_thresh: float = 0.5,
        distributed: bool = True,
    ):
        """
        Args:
            dataset_name: a registered referring-expression dataset (refexp view).
            topk: the k's of Acc@k.
            iou_thresh: IoU for a correct box.
            distributed: gather the predictions of all ranks to rank 0.
        """
        self._dataset_name = dataset_name
        self._topk = tuple(int(k) for k in topk)
        self._thresh = iou_thresh
        self._distributed = distributed

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            boxes = ranked_boxes(out["instances"], 1, max(self._topk))[0]
            self._predictions.append((inp["image_id"], boxes))

    def evaluate(self):
        predictions = self._predictions
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return None
        if not predictions:
            logger.warning(f"[RefExpEvaluator] No predictions for {self._dataset_name}.")
            return {}
        records = {r["image_id"]: r for r in DatasetCatalog.get(self._dataset_name)}
        correct = {k: 0 for k in self._topk}
        for image_id, boxes in predictions:
            phrases = phrase_boxes(records[image_id])
            if not phrases:
                raise ValueError(
                    f"Expression {image_id!r} of {self._dataset_name} has no referred box."
                )
            for k, hit in hits_at_k(boxes, phrases[0], self._topk, self._thresh).items():
                correct[k] += hit
        n = len(predictions)
        return OrderedDict(
            refexp=OrderedDict((f"Acc@{k}", 100.0 * correct[k] / n) for k in self._topk)
        )
