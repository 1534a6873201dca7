"""ODinW: the average over a suite of the per-dataset COCO AP.

Each ODinW dataset is evaluated on its own with COCOEvaluator (its own category names as the
prompt); a suite's number is the plain mean over its datasets (GLIP, Table 3; ELEVATER).
"""

import logging
import math
from collections import OrderedDict
from typing import Mapping

from detectron2.data import MetadataCatalog

from ..data.datasets.odinw import ODINW_SUITES

__all__ = ["odinw_suite_summary"]

logger = logging.getLogger(__name__)


def _mean(values) -> float:
    """Mean over the numbers that are not NaN (COCOEvaluator gives NaN for e.g. APs when a
    dataset has no small objects)."""
    values = [float(v) for v in values if not math.isnan(float(v))]
    return sum(values) / len(values) if values else float("nan")


def odinw_suite_summary(results: Mapping[str, Mapping]) -> "OrderedDict[str, dict]":
    """Average the COCO metrics of the ODinW datasets in ``results``, per suite.

    Args:
        results: dataset name -> evaluator results (``{"bbox": {"AP": ...}}``), as returned by
            ``Trainer.test``. Datasets whose metadata has no ``odinw_suites`` are ignored.

    Returns:
        ``{"<suite>": {"bbox": {metric: mean}, "datasets": {dataset: AP}}}`` for each suite with
        at least one evaluated dataset; a suite missing datasets is logged (its mean then covers
        only those evaluated).
    """
    per_suite = OrderedDict()
    for name, res in results.items():
        if not isinstance(res, Mapping) or "bbox" not in res:
            continue
        meta = MetadataCatalog.get(name) if name in MetadataCatalog.list() else None
        for suite in (meta.get("odinw_suites", []) if meta is not None else []):
            per_suite.setdefault(suite, OrderedDict())[meta.get("odinw_dataset", name)] = res[
                "bbox"
            ]
    summary = OrderedDict()
    for suite, by_dataset in per_suite.items():
        expected = len(ODINW_SUITES.get(suite, by_dataset))
        if len(by_dataset) < expected:
            logger.warning(
                f"{suite}: {len(by_dataset)} of {expected} datasets evaluated; the average "
                "covers only those."
            )
        metrics = [m for m in next(iter(by_dataset.values())) if not m.startswith("AP-")]
        summary[suite] = {
            "bbox": OrderedDict((m, _mean([r[m] for r in by_dataset.values()])) for m in metrics),
            "datasets": OrderedDict((k, float(r["AP"])) for k, r in by_dataset.items()),
        }
    return summary
