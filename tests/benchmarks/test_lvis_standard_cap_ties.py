"""StandardLVISEvaluator's own per-image cap keeps exactly the detections the LVIS API keeps.

``LVISResults(max_dets=300)`` sorts an image's detections by score with Python's stable sort:
among equal scores the earlier detection stays, and the kept ones reach ``LVISEval`` (which
sorts them stably again before matching) in their original order. The evaluator caps before
storing; with a cap that breaks ties another way, tied detections at the 300th place, or their
order, differ from Detectron2's ``LVISEvaluator`` and so can the AP.
"""

import pytest
from detectron2.evaluation import LVISEvaluator

from glip_d2.data.datasets import register_lvis
from glip_d2.evaluation import StandardLVISEvaluator, lvis_numpy_compat
from tests.benchmarks.helpers import instances, write_json
from tests.benchmarks.test_lvis import A, B, BOX, C, _lvis_json, _xyxy

pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated")


def _tied_predictions():
    """Image 1: 301 detections, all at score 0.5: A's right box at index 0, B's right box at
    index 100, far A boxes elsewhere. The LVIS API keeps indices 0..299 (B's hit included) and
    drops index 300. Image 2: C right."""
    far = [80, 80, 95, 95]
    dets = [(_xyxy(BOX[A]), A)] + [(far, A)] * 300
    dets[100] = (_xyxy(BOX[B]), B)
    boxes, classes = zip(*dets)
    img1 = instances(list(boxes), [0.5] * len(dets), [c - 1 for c in classes])
    img2 = instances([_xyxy(BOX[C])], [0.9], [C - 1])
    return [({"image_id": 1}, img1), ({"image_id": 2}, img2)]


def _run(evaluator):
    evaluator.reset()
    for inp, out in _tied_predictions():
        evaluator.process([inp], [out])
    with lvis_numpy_compat():
        return evaluator.evaluate()["bbox"]


def test_standard_lvis_cap_breaks_ties_like_the_lvis_api(tmp_path, names):
    name = names("lvis")
    register_lvis(name, write_json(tmp_path / "lvis.json", _lvis_json()), str(tmp_path))
    plain = _run(LVISEvaluator(name, max_dets_per_image=300))
    # The LVIS API keeps B's only detection (index 100 of 301 tied): B is found, APc 100.
    assert plain["APc"] == pytest.approx(100.0)
    res = _run(StandardLVISEvaluator(name, max_dets_per_image=300))
    assert res["APc"] == pytest.approx(100.0)
    assert res == pytest.approx(plain, nan_ok=True)
