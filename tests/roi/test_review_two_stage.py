"""Review of the two-stage model: the VL-DyHead levels it is configured with, and the GLIP RPN's
test-time batching of (image, prompt chunk) pairs."""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import glip_d2.modeling.meta_arch.language_rcnn  # noqa: F401  (registers LanguageAwareRCNN)
from tests.roi.roi_helpers import batch, two_stage_cfg
from tests.roi.test_glip_proposals import _cfg

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("levels", [["p5", "p4", "p3"], ["p3", "p5"]])
def test_fusion_levels_out_of_order_or_with_a_gap_are_refused_at_build(levels):
    """The tower mixes each level with a stride-2 conv of the previous one: these levels built
    and then failed at the first forward with 'stack expects each tensor to be equal size'."""
    cfg = two_stage_cfg(fusion=True)
    cfg.MODEL.LANGUAGE_ROI_HEADS.FUSION_IN_FEATURES = levels
    with pytest.raises(ValueError, match=r"FUSION_IN_FEATURES .*consecutive pyramid levels"):
        build_model(cfg)
    cfg.MODEL.LANGUAGE_ROI_HEADS.FUSION_IN_FEATURES = ["p4", "p5", "p6"]  # consecutive: builds
    assert build_model(cfg).fusion_in_features == ["p4", "p5", "p6"]


def test_glip_rpn_levels_with_a_gap_are_refused_at_build():
    cfg = _cfg()
    cfg.MODEL.RPN.IN_FEATURES = ["p3", "p5", "p7"]
    cfg.MODEL.ATSS.ANCHOR_STRIDES = [8, 32, 128]
    cfg.MODEL.ATSS.ANCHOR_SIZES = [64, 256, 1024]
    with pytest.raises(ValueError, match=r"RPN.IN_FEATURES .*consecutive pyramid levels"):
        build_model(cfg)


def test_glip_rpn_runs_at_most_inference_batch_pairs_per_pass():
    """Every (image, chunk) pair went through the head in one pass, whatever
    MODEL.GLIP.INFERENCE_BATCH: an LVIS vocabulary (31 chunks) held 31 copies of the tower's
    activations per image. The proposals do not depend on the grouping."""
    torch.manual_seed(0)
    cfg = _cfg()
    cfg.MODEL.GLIP.INFERENCE_BATCH = 2
    model = build_model(cfg).eval()
    generator = model.proposal_generator
    assert generator.inference_batch == 2
    model.set_vocabulary(["red circle", "blue square", "green triangle"], chunk_size=1)
    images = [{"image": x["image"]} for x in batch(model)]  # 2 images x 3 chunks = 6 pairs
    rows, proposals = [], []
    hooks = [
        generator.head.register_forward_hook(lambda m, a, out: rows.append(len(a[0][0]))),
        generator.register_forward_hook(lambda m, a, out: proposals.append(out[0])),
    ]
    with torch.no_grad():
        model(images)
        generator.inference_batch = 100
        model(images)
    for h in hooks:
        h.remove()
    assert rows == [2, 2, 2, 6]
    for grouped, together in zip(*proposals):
        assert len(grouped) == len(together) > 0
        torch.testing.assert_close(
            grouped.proposal_boxes.tensor, together.proposal_boxes.tensor, rtol=1e-4, atol=1e-3
        )
        torch.testing.assert_close(
            grouped.objectness_logits, together.objectness_logits, rtol=1e-4, atol=1e-4
        )
    # training runs the batch's pairs (one caption per image) in one pass, as before
    model.train()
    rows.clear()
    hook = generator.head.register_forward_hook(lambda m, a, out: rows.append(len(a[0][0])))
    with EventStorage():
        model(batch(model) * 2)
    hook.remove()
    assert rows == [4]


def test_given_boxes_with_deep_fusion_are_refused():
    """inference(detected_instances=...) ran the mask head on the backbone's unfused features,
    which a deep-fusion model's mask head never sees in training: silently wrong masks."""
    cfg = two_stage_cfg(fusion=True)
    cfg.MODEL.MASK_ON = True
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = batch(model)[0]
    given = Instances(x["image"].shape[-2:])
    given.pred_boxes = Boxes(torch.tensor([[10.0, 20.0, 70.0, 90.0]]))
    given.pred_classes = torch.tensor([0])
    given.scores = torch.tensor([0.9])
    with torch.no_grad(), pytest.raises(ValueError, match="DEEP_FUSION"):
        model.inference([{"image": x["image"]}], detected_instances=[given])
    model.fusion = None  # without fusion the given boxes get masks, as in Detectron2
    with torch.no_grad():
        out = model.inference([{"image": x["image"]}], detected_instances=[given])
    assert out[0]["instances"].pred_masks.shape[0] == 1
