"""ODinW: the average over a suite of the per-dataset COCO AP.

Each ODinW dataset is evaluated on its own with COCOEvaluator (its own category names as the
prompt); a suite's number is the plain mean over its datasets (GLIP, Table 3; ELEVATER), each on
the split GLIP evaluates, and is reported only once every dataset of the suite was evaluated.
"""

import logging
import math
from collections import OrderedDict
from typing import Mapping, Optional

from detectron2.data import MetadataCatalog

from ..data.datasets.odinw import ODINW_DATASETS, ODINW_SUITES, odinw_dataset_name

__all__ = ["odinw_suite_summary"]

logger = logging.getLogger(__name__)

# COCOEvaluator gives NaN for these when a dataset has no ground truth of that size: not a
# score, so the suite mean skips them. Every other NaN means the model made no detection at all
# (Detectron2 then returns NaN for every metric), which is an AP of 0.
_SIZE_METRICS = ("APs", "APm", "APl")


def _mean(values) -> float:
    """Mean over the numbers that are not NaN (by now: size metrics of datasets without objects
    of that size, or a metric missing from a dataset's results)."""
    values = [float(v) for v in values if not math.isnan(float(v))]
    return sum(values) / len(values) if values else float("nan")


def _dataset_metrics(name: str, bbox: Mapping) -> "OrderedDict[str, float]":
    """The metrics of one evaluated dataset for the suite mean: a NaN AP / AP50 / AP75 as 0.0.

    Skipping such a NaN would average over the other datasets only and inflate the suite
    (AP 100 and NaN would give 100, not 50). NaN APs / APm / APl stay NaN: we cannot tell here
    whether the dataset has objects of that size (with no detections Detectron2 gives NaN for
    those too), and those means are over the datasets that have them anyway.
    """
    metrics = OrderedDict(
        (m, float(v)) for m, v in bbox.items() if not m.startswith("AP-")  # per-category AP
    )
    zeroed = [m for m, v in metrics.items() if math.isnan(v) and m not in _SIZE_METRICS]
    if zeroed:
        logger.info(
            f"{name}: {'/'.join(zeroed)} NaN (COCOEvaluator: no detections); counted as 0 in the "
            "ODinW suite averages."
        )
    metrics.update((m, 0.0) for m in zeroed)
    return metrics


def _eval_split(key: str, meta) -> Optional[str]:
    """The split GLIP evaluates for dataset ``key`` (None: not known)."""
    spec = ODINW_DATASETS.get(key)
    return meta.get("odinw_eval_split", spec.eval_split if spec is not None else None)


def _suite_results(results: Mapping[str, Mapping]) -> "OrderedDict[str, OrderedDict]":
    """suite -> {dataset key -> metrics} over the results of ODinW datasets on their eval split.

    Results are keyed by the registered name (``odinw_Aquarium_val``), but a suite counts each
    dataset once; another split of it (``odinw_Aquarium_test`` in the same DATASETS.TEST) would
    otherwise silently replace or be replaced by the split the suite is defined on.
    """
    per_suite = OrderedDict()
    for name, res in results.items():
        if not isinstance(res, Mapping) or "bbox" not in res or name not in MetadataCatalog.list():
            continue
        meta = MetadataCatalog.get(name)
        suites = meta.get("odinw_suites", [])
        if not suites:
            continue
        key = meta.get("odinw_dataset", name)
        split = _eval_split(key, meta)
        if split is not None and name != odinw_dataset_name(key, split):
            logger.info(
                f"{name}: not the split GLIP evaluates for {key} ({split}); not part of the "
                "ODinW suite averages."
            )
            continue
        metrics = _dataset_metrics(name, res["bbox"])
        for suite in suites:
            by_dataset = per_suite.setdefault(suite, OrderedDict())
            if key in by_dataset:  # only without a known eval split (custom registrations)
                logger.warning(f"{suite}: {name} is dataset {key} again; the first one counts.")
                continue
            by_dataset[key] = metrics
    return per_suite


def odinw_suite_summary(results: Mapping[str, Mapping]) -> "OrderedDict[str, dict]":
    """Average the COCO metrics of the ODinW datasets in ``results``, per suite.

    Args:
        results: dataset name -> evaluator results (``{"bbox": {"AP": ...}}``), as returned by
            ``Trainer.test``. Datasets whose metadata has no ``odinw_suites`` are ignored, and so
            are splits other than the one GLIP evaluates (metadata ``odinw_eval_split``).

    Returns:
        ``{"<suite>": {"bbox": {metric: mean}, "datasets": {dataset: AP}}}`` for each suite all
        of whose datasets (:data:`ODINW_SUITES`; a suite not listed there: those present) were
        evaluated. A dataset without detections (COCOEvaluator: AP NaN) counts as AP 0. A suite
        missing datasets (e.g. fine-tuning on one dataset) gets no entry: a mean over some of its
        datasets is not the suite's number; how many were evaluated is logged.
    """
    summary = OrderedDict()
    for suite, by_dataset in _suite_results(results).items():
        expected = ODINW_SUITES.get(suite, list(by_dataset))
        missing = [k for k in expected if k not in by_dataset]
        if missing:
            logger.info(
                f"{suite}: {len(expected) - len(missing)} of {len(expected)} datasets evaluated; "
                f"no suite average (missing e.g. {missing[0]})."
            )
            continue
        by_dataset = OrderedDict((k, by_dataset[k]) for k in expected)  # the suite's datasets only
        metrics = list(next(iter(by_dataset.values())))
        summary[suite] = {
            "bbox": OrderedDict(
                (m, _mean([r.get(m, math.nan) for r in by_dataset.values()])) for m in metrics
            ),
            "datasets": OrderedDict((k, r["AP"]) for k, r in by_dataset.items()),
        }
    return summary
