"""LVIS-size vocabularies: the merge of the prompt chunks' detections, and FixedAP's bookkeeping.

The merge of an image's chunks runs class-wise NMS over up to 1203 labels; it must be each
label's own NMS (the official class-aware kernel), whatever the label ids and however many
boxes there are.
"""

import copy
import logging
import json

import pytest
import torch
from detectron2.modeling import build_model
from torchvision.ops import nms

from glip_d2.evaluation import FixedAPEvaluator, fixed_ap_results
from glip_d2.modeling.heads import class_wise_nms
from glip_d2.modeling.meta_arch import glip as glip_meta_arch
from glip_d2.vocabularies import get_vocabulary
from tests.benchmarks.test_lvis import _predictions
from tests.benchmarks.test_lvis import lvis_dataset  # noqa: F401  (a pytest fixture)
from tests.helpers import tiny_cfg

pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated")


def _per_label_nms(boxes, scores, labels, thresh):
    """The reference: torchvision's NMS on each label's boxes alone (+1 IoU convention)."""
    plus1 = boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
    keep = [
        idx[nms(plus1[idx].float(), scores[idx].float(), thresh)]
        for idx in (torch.nonzero(labels == lab).flatten() for lab in labels.unique())
    ]
    return torch.cat(keep).sort()[0] if keep else labels.new_zeros(0)


def test_class_wise_nms_does_not_depend_on_the_label_id():
    # Two thin boxes of one label (IoU with the +1 convention just under 0.6: both stay) and a
    # box of label 0 that puts the largest coordinate at 1332 (an 800x1333 input). Shifting
    # label 1200's boxes by 1200 x 1333 in float32 rounded them enough to drop the second box.
    boxes = torch.tensor(
        [[628.91, 169.22, 756.99, 181.17], [628.05, 171.54, 754.21, 178.47], [1000, 700, 1332, 799]]
    )
    scores = torch.tensor([0.9, 0.8, 0.5])
    for label in (0, 5, 79, 1200):
        labels = torch.tensor([label, label, 0])
        assert class_wise_nms(boxes, scores, labels, 0.6).tolist() == [0, 1, 2], label


@pytest.mark.parametrize("num_boxes", [300, 3000])
def test_class_wise_nms_is_each_labels_own_nms(num_boxes):
    # ATSS-like near-duplicates over an LVIS-size label range, below and above the size at
    # which torchvision's batched_nms changes its method
    g = torch.Generator().manual_seed(num_boxes)
    base = torch.rand(60, 4, generator=g) * torch.tensor([1200.0, 700, 150, 150])
    base[:, 2:] += base[:, :2] + 4
    pick = torch.randint(0, 60, (num_boxes,), generator=g)
    boxes = (base[pick] + torch.randn(num_boxes, 4, generator=g) * 2).clamp(0, 1332)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    scores = torch.rand(num_boxes, generator=g)
    labels = 1100 + pick % 7 + 10 * (torch.rand(num_boxes, generator=g) < 0.3)  # 14 labels
    labels[:3] = torch.tensor([0, 500, 1202])  # single-box labels
    keep = class_wise_nms(boxes, scores, labels, 0.6)
    assert torch.equal(keep, _per_label_nms(boxes, scores, labels, 0.6))
    assert {0, 1, 2} <= set(keep.tolist())
    assert 0 < len(keep) < num_boxes


def test_class_wise_nms_of_no_box():
    empty = class_wise_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.6)
    assert empty.dtype == torch.long and empty.tolist() == []


@pytest.fixture(scope="module")
def lvis_model():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    cfg.MODEL.GLIP.TEST_CHUNK_SIZE = 40
    cfg.MODEL.ATSS.DETECTIONS_PER_IMG = 0
    m = build_model(cfg).eval()
    with torch.no_grad():  # token scores around 0.5 instead of the 0.01 prior: every chunk detects
        m.head.scorer.bias0.zero_()
    m.set_vocabulary(list(get_vocabulary("lvis").prompt_names))
    return m


def _detect(model, images, cap):
    model.head.test_args["detections_per_img"] = cap
    with torch.no_grad():
        return [o["instances"] for o in model.inference(images)]


def test_lvis_chunks_merge_with_each_labels_own_nms_and_one_cap_per_image(lvis_model, monkeypatch):
    assert len(lvis_model._chunks) == 31 and lvis_model._chunks[-1].label_ids == [1200, 1201, 1202]
    g = torch.Generator().manual_seed(1)
    images = [{"image": torch.randint(0, 255, (3, 64, 96), generator=g, dtype=torch.uint8)}]
    got = _detect(lvis_model, images, 0)[0]
    # more boxes than torchvision's batched_nms handles with its label offsets, labels from the
    # first chunk to the last, partial one
    assert len(got) > 1000 and int(got.pred_classes.min()) < 40
    assert int(got.pred_classes.max()) >= 1200
    monkeypatch.setattr(glip_meta_arch, "class_wise_nms", _per_label_nms)
    want = _detect(lvis_model, images, 0)[0]
    assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor)
    assert torch.equal(got.scores, want.scores)
    assert torch.equal(got.pred_classes, want.pred_classes)
    # MODEL.ATSS.DETECTIONS_PER_IMG caps the image, over all chunks: the 300 best of them
    capped = _detect(lvis_model, images, 300)[0]
    assert len(capped) == 300
    assert torch.equal(capped.scores, want.scores[:300])
    assert len(set(capped.pred_classes.tolist())) > 40  # more than one chunk's labels


def test_fixedap_writes_each_detection_as_python_numbers(lvis_dataset, tmp_path):
    evaluator = FixedAPEvaluator(lvis_dataset, distributed=False, output_dir=str(tmp_path / "out"))
    evaluator.reset()
    expected = []
    for inp, out in _predictions():
        evaluator.process([inp], [out])
        inst = out["instances"]
        for box, score, c in zip(inst.pred_boxes.tensor.tolist(), inst.scores.tolist(),
                                 inst.pred_classes.tolist()):
            xywh = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            expected.append((inp["image_id"], c + 1, xywh, score))
    metrics = evaluator.evaluate()["fixed_ap"]
    assert metrics["APc"] == pytest.approx(50.0)
    with open(tmp_path / "out" / "lvis_fixed_ap_results.json") as f:
        written = json.load(f)
    assert sorted(expected) == sorted(
        (r["image_id"], r["category_id"], r["bbox"], r["score"]) for r in written
    )
    # the LVIS API adds keys to each result it evaluates; the caller's list stays as it was
    before = copy.deepcopy(written)
    fixed_ap_results(evaluator._lvis_api, written)
    assert written == before


def test_lvis_progress_logs_its_quarters_and_changes_no_result(lvis_dataset, caplog, monkeypatch):
    from detectron2.evaluation import LVISEvaluator
    from lvis import LVISEval

    from glip_d2.evaluation import StandardLVISEvaluator, lvis_numpy_compat

    def run():
        evaluator = StandardLVISEvaluator(lvis_dataset, max_dets_per_image=300)
        evaluator.reset()
        for inp, out in _predictions():
            evaluator.process([inp], [out])
        return evaluator.evaluate()["bbox"]

    steps = (LVISEval.evaluate, LVISEval.compute_iou, LVISEval.evaluate_img)
    with caplog.at_level(logging.INFO, logger="glip_d2.evaluation.lvis_progress"):
        with_progress = run()
    assert (LVISEval.evaluate, LVISEval.compute_iou, LVISEval.evaluate_img) == steps
    messages = [r.getMessage() for r in caplog.records if r.name.endswith("lvis_progress")]
    # 2 images x 3 categories x (1 IoU pass + 4 area ranges) = 30 steps, logged every 7
    logged = [m.split("(")[1].split(" steps")[0] for m in messages if " steps, " in m]
    assert logged == ["7/30", "14/30", "21/30", "28/30", "30/30"]

    def without_progress(self):
        with lvis_numpy_compat():
            return LVISEvaluator.evaluate(self)

    monkeypatch.setattr(StandardLVISEvaluator, "evaluate", without_progress)
    assert run() == with_progress
