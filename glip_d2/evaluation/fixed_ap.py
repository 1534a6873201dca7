"""FixedAP for LVIS (Dave et al., "Evaluating Large-Vocabulary Object Detectors: The Devil is in
the Details", 2021), the protocol of GLIP's and MDETR's LVIS numbers.

Standard LVIS AP caps detections per *image* (300), so a detector that spreads its budget over
many plausible classes is penalised differently than one that does not, and AP changes with the
cap. FixedAP removes the per-image cap and instead keeps, for each *category*, its
``max_dets_per_category`` (10,000) highest-scoring detections over the whole dataset; AP is then
computed with the LVIS API (``LVISResults(max_dets=-1)``), so APr/APc/APf come from the json's
frequency groups as usual.
"""

import itertools
import json
import logging
import os
from collections import OrderedDict

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from .ground_truth import check_lvis_ground_truth, with_annotation_ids
from .lvis_progress import lvis_progress
from .lvis_standard import lvis_numpy_compat

__all__ = ["FixedAPEvaluator", "fixed_ap_results", "top_per_category"]

logger = logging.getLogger(__name__)

_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
# Stored detections are pruned to the top-k per category once this many have accumulated; after
# a prune, next at twice the rows kept (at least this many again), see FixedAPEvaluator.process.
_PRUNE_ROWS = 2_000_000


def top_per_category(columns: dict, k: int) -> dict:
    """Keep the ``k`` highest-scoring rows of each category (ties: earlier rows first).

    Args:
        columns: equal-length arrays ``image_id``, ``category`` (int), ``score``, ``box`` (N, 4).
        k: rows kept per category.
    """
    order = np.lexsort((-columns["score"], columns["category"]))  # by category, then score desc
    categories = columns["category"][order]
    starts = np.flatnonzero(np.r_[True, categories[1:] != categories[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    keep = np.sort(order[rank < k])
    return {name: values[keep] for name, values in columns.items()}


def _concat(parts):
    if not parts:
        return {
            "image_id": np.zeros(0, dtype=object),
            "category": np.zeros(0, dtype=np.int64),
            "score": np.zeros(0, dtype=np.float64),
            "box": np.zeros((0, 4), dtype=np.float64),
        }
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def fixed_ap_results(lvis_gt, results: list) -> dict:
    """FixedAP metrics (in percent) of LVIS-format ``results`` already cut per category.

    Args:
        lvis_gt: an ``lvis.LVIS``.
        results: ``[{"image_id", "category_id" (dataset id), "bbox" (XYWH), "score"}]``.
    """
    from lvis import LVISEval, LVISResults

    if not results:
        return {m: float("nan") for m in _METRICS}
    with lvis_numpy_compat(), lvis_progress("FixedAP evaluation"):
        # LVISResults adds keys ("segmentation", "area", "id") to each result dict and changes
        # nothing else in it: a copy of each dict keeps the caller's results as they were, at a
        # tenth of a deep copy's time (20 s per million detections) and memory
        dets = LVISResults(lvis_gt, [dict(r) for r in results], max_dets=-1)  # no per-image cap
        lvis_eval = LVISEval(lvis_gt, dets, iou_type="bbox")
        lvis_eval.params.max_dets = -1
        lvis_eval.run()
    return {m: float(lvis_eval.get_results()[m] * 100) for m in _METRICS}


class FixedAPEvaluator(DatasetEvaluator):
    """FixedAP on an LVIS-format dataset (metadata ``json_file``), ``comm.gather``-ed like
    Detectron2's evaluators.

    Results: ``{"fixed_ap": {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"}}``;
    empty for a json without annotations (LVIS test-dev: only the results file is written).
    """

    def __init__(
        self,
        dataset_name: str,
        max_dets_per_category: int = 10000,
        distributed: bool = True,
        output_dir=None,
    ):
        """
        Args:
            dataset_name: registered LVIS-format dataset (``json_file`` in its metadata; model
                classes map to json ids through ``thing_dataset_id_to_contiguous_id``, else +1).
            max_dets_per_category: detections kept per category over the whole dataset.
            distributed: gather the predictions of all ranks to rank 0.
            output_dir: where ``lvis_fixed_ap_results.json`` is written (optional).

        Raises:
            ValueError: for ground truth the LVIS API cannot score
                (:func:`~glip_d2.evaluation.ground_truth.check_lvis_ground_truth`).
        """
        from lvis import LVIS

        if max_dets_per_category <= 0:
            raise ValueError(f"max_dets_per_category must be > 0, got {max_dets_per_category}.")
        self._metadata = MetadataCatalog.get(dataset_name)
        json_file = PathManager.get_local_path(self._metadata.json_file)
        self._lvis_api = with_annotation_ids(lambda: LVIS(json_file), json_file)
        check_lvis_ground_truth(self._lvis_api.dataset, json_file)
        self._k = max_dets_per_category
        self._distributed = distributed
        self._output_dir = output_dir
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
        self._to_dataset_id = {v: k for k, v in id_map.items()} if id_map else None

    def reset(self):
        self._parts = []
        self._rows = 0
        self._prune_at = _PRUNE_ROWS

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            instances = out["instances"].to("cpu")
            n = len(instances)
            if n == 0:
                continue
            boxes = instances.pred_boxes.tensor.numpy().astype(np.float64)
            image_id = np.empty(n, dtype=object)
            image_id[:] = [inp["image_id"]] * n
            self._parts.append(
                {
                    "image_id": image_id,
                    "category": instances.pred_classes.numpy().astype(np.int64),
                    "score": instances.scores.numpy().astype(np.float64),
                    "box": BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS),
                }
            )
            self._rows += n
            if self._rows > self._prune_at:
                self._prune()

    def _prune(self):
        """Keep the top-k per category of the stored rows (the final top-k stays the same: a
        row cut here is below k others of its category, and ties keep earlier rows first).

        The next prune waits until the stored rows have doubled: with 1203 categories x 10,000
        up to 12M rows survive a prune, more than ``_PRUNE_ROWS``, and pruning again after every
        image would be quadratic (hours on LVIS minival). Doubling keeps the total work linear.
        """
        self._parts = [top_per_category(_concat(self._parts), self._k)]
        self._rows = len(self._parts[0]["score"])
        self._prune_at = max(_PRUNE_ROWS, 2 * self._rows)

    def evaluate(self):
        parts = self._parts
        if self._distributed:
            comm.synchronize()
            parts = list(itertools.chain(*comm.gather(parts, dst=0)))
            if not comm.is_main_process():
                return None
        columns = top_per_category(_concat(parts), self._k)
        counts = np.bincount(columns["category"]) if len(columns["category"]) else np.zeros(0)
        short = int((counts < self._k).sum() + len(self._metadata.thing_classes) - len(counts))
        if short:
            logger.info(
                f"[FixedAP] {short} categories have fewer than {self._k} detections over the "
                "dataset; more detections per image (MODEL.ATSS.DETECTIONS_PER_IMG 0 = no cap, "
                "a lower INFERENCE_TH) could only raise their AP."
            )
        to_id = self._to_dataset_id
        categories = columns["category"].tolist()
        # whole columns to Python numbers at once (up to 12M rows: 1203 categories x 10,000)
        results = [
            {
                "image_id": image_id,
                "category_id": to_id[c] if to_id else c + 1,
                "bbox": box,
                "score": score,
            }
            for image_id, c, score, box in zip(
                columns["image_id"].tolist(),
                categories,
                columns["score"].tolist(),
                columns["box"].tolist(),
            )
        ]
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, "lvis_fixed_ap_results.json")
            with PathManager.open(path, "w") as f:
                json.dump(results, f)
        if not self._lvis_api.get_ann_ids():
            # a json without annotations (LVIS test-dev): the results file is for the evaluation
            # server; LVISEval would report -100 for every metric
            logger.info("[FixedAP] The json has no annotations: results written, not evaluated.")
            return OrderedDict()
        metrics = fixed_ap_results(self._lvis_api, results)
        logger.info(f"[FixedAP] {metrics}")
        return OrderedDict(fixed_ap=metrics)
