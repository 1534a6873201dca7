"""The dicts a batch call returns are independent: editing one image's labels or phrase spans
(e.g. renaming a label for display) does not change the other images' results."""

import numpy as np
import pytest
import torch

from glip_d2.predictor import GLIPPredictor
from tests.helpers import tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0
    cfg.MODEL.ATSS.DETECTIONS_PER_IMG = 5
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 112
    cfg.MODEL.DYHEAD.NUM_CONVS = 1
    return GLIPPredictor(cfg)


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(2)]


def test_detection_results_do_not_share_their_labels(predictor):
    outs = predictor(_images(), vocabulary=["red circle", "blue square"])
    outs[0]["labels"][0] = "renamed"
    assert outs[1]["labels"] == ["red circle", "blue square"]
    assert predictor(_images()[0], vocabulary=["red circle", "blue square"])["labels"][0] == "red circle"


def test_grounding_results_do_not_share_their_labels_or_spans(predictor):
    outs = predictor(_images(), caption="a red circle and a blue square")
    outs[0]["labels"].append("extra")
    outs[0]["phrase_spans"][0] = (0, 1)
    assert outs[1]["labels"] == ["a red circle", "a blue square"]
    assert outs[1]["phrase_spans"] == [(0, 12), (17, 30)]
