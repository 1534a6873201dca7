"""Evaluation beyond Detectron2's evaluators: FixedAP, Flickr30k recall, RefCOCO accuracy, ODinW.

COCO and standard LVIS AP use Detectron2's ``COCOEvaluator`` / ``LVISEvaluator`` (the latter
through :class:`StandardLVISEvaluator`, which only makes it run on current numpy);
:func:`glip_d2.engine.build_glip_evaluator` picks by the dataset's ``evaluator_type``.
"""

from .fixed_ap import FixedAPEvaluator, fixed_ap_results
from .flickr import FlickrEvaluator
from .lvis_standard import StandardLVISEvaluator, check_lvis_cap, lvis_numpy_compat
from .odinw import odinw_suite_summary
from .refcoco import RefExpEvaluator, check_refcoco_match

__all__ = [
    "FixedAPEvaluator",
    "FlickrEvaluator",
    "RefExpEvaluator",
    "StandardLVISEvaluator",
    "check_lvis_cap",
    "check_refcoco_match",
    "fixed_ap_results",
    "lvis_numpy_compat",
    "odinw_suite_summary",
]
