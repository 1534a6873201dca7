"""Detectron2's LVISEvaluator, runnable with current numpy and with uncapped model outputs.

Two small things stand between Detectron2's ``LVISEvaluator`` and GLIP's LVIS evaluation:

* ``lvis`` 0.5.3, the last release of the LVIS API, calls ``np.float`` in ``LVISEval.accumulate``;
  numpy removed that alias in 1.24. :func:`lvis_numpy_compat` lends the ``lvis.eval`` module a
  numpy namespace that still has it, for the duration of an evaluation only.
* The FixedAP config runs the model without a per-image cap (thousands of detections per image
  over 31 prompt chunks). The standard protocol keeps the top 300 per image anyway
  (``LVISResults(max_dets=300)``), so :class:`StandardLVISEvaluator` keeps only those when it
  stores an image's predictions, chosen and ordered as the LVIS API does (ties included): same
  numbers, bounded memory.
"""

import contextlib

import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import LVISEvaluator

from .ground_truth import check_lvis_ground_truth, with_annotation_ids
from .lvis_progress import lvis_progress

__all__ = ["check_lvis_cap", "lvis_numpy_compat", "StandardLVISEvaluator"]


class _NumpyWithFloat:
    """numpy, plus the ``float`` alias that lvis 0.5.3 uses."""

    float = float

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)


@contextlib.contextmanager
def lvis_numpy_compat():
    """Within this context ``lvis.eval`` runs on numpy >= 1.24 (and 2.x); numpy is not touched."""
    import lvis.eval as lvis_eval

    original = lvis_eval.np
    if hasattr(original, "float"):  # an lvis or numpy that needs no help
        yield
        return
    lvis_eval.np = _NumpyWithFloat(original)
    try:
        yield
    finally:
        lvis_eval.np = original


def check_lvis_cap(cap) -> None:
    """Raise ValueError unless ``cap`` (TEST.BENCHMARK.LVIS_MAX_DETS_PER_IMAGE) is None (300), -1
    (no cap, the LVIS API's meaning) or a positive integer."""
    if cap is not None and not (isinstance(cap, int) and (cap >= 1 or cap == -1)):
        raise ValueError(
            "TEST.BENCHMARK.LVIS_MAX_DETS_PER_IMAGE must be a positive integer (the LVIS "
            f"protocol's is 300) or -1 (no cap); got {cap!r}."
        )


class StandardLVISEvaluator(LVISEvaluator):
    """``LVISEvaluator`` (AP, AP50, AP75, APs/m/l, APr, APc, APf; ``max_dets_per_image`` per image,
    300 by default as in the LVIS protocol) that works with current numpy and stores at most
    ``max_dets_per_image`` detections per image."""

    def __init__(self, dataset_name, *args, max_dets_per_image=None, **kwargs):
        """As ``LVISEvaluator``; ``max_dets_per_image``: None = 300, -1 = no cap (the LVIS API's
        meaning).

        Raises:
            ValueError: for another value below 1 (0 would drop every detection and fail only
                after the whole inference), or ground truth the LVIS API cannot score
                (:func:`~glip_d2.evaluation.ground_truth.check_lvis_ground_truth`).
        """
        check_lvis_cap(max_dets_per_image)
        json_file = MetadataCatalog.get(dataset_name).get("json_file", "the LVIS json")
        with_annotation_ids(
            lambda: super(StandardLVISEvaluator, self).__init__(
                dataset_name, *args, max_dets_per_image=max_dets_per_image, **kwargs
            ),
            json_file,
        )
        check_lvis_ground_truth(self._lvis_api.dataset, json_file)

    def process(self, inputs, outputs):
        cap = self._max_dets_per_image or 300
        capped = []
        for output in outputs:
            instances = output.get("instances")
            if instances is not None and len(instances) > cap > 0:
                # The LVIS API's cut: a stable sort by score (among ties the earlier detection
                # stays), the kept ones in their original order (LVISEval sorts them stably
                # again, so the order of ties decides the matching). torch.topk breaks ties
                # arbitrarily.
                order = torch.sort(instances.scores, descending=True, stable=True).indices
                keep = torch.sort(order[:cap]).values
                output = {**output, "instances": instances[keep]}
            capped.append(output)
        super().process(inputs, capped)

    def evaluate(self):
        with lvis_numpy_compat(), lvis_progress("LVIS evaluation"):
            return super().evaluate()
