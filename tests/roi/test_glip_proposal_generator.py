"""GLIPATSSProposalGenerator: anchors at the strides of the features it reads, every optional
head loss under an RPN name, and batches mixing a grounding caption with a vocabulary."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from glip_d2 import add_glip_config
from glip_d2.modeling import GLIPATSSProposalGenerator
from glip_d2.modeling.heads import grid_anchors
from glip_d2.modeling.proposal_generator import glip_rpn
from tests.roi.roi_helpers import CAPTION, SPANS, batch, make_input
from tests.roi.test_glip_proposals import _cfg

pytestmark = pytest.mark.usefixtures("one_thread")

P2_P6 = ["p2", "p3", "p4", "p5", "p6"]


def _shapes(names, channels=64):
    """FPN output shapes: p<k> at stride 2**k."""
    return {n: ShapeSpec(channels=channels, stride=2 ** int(n[1:])) for n in names}


def _generator_on_p2_p6(**atss):
    """The generator as the R50-FPN configs read it: MODEL.RPN.IN_FEATURES p2-p6."""
    cfg = _cfg()
    cfg.MODEL.RPN.IN_FEATURES = P2_P6
    for key, value in atss.items():
        setattr(cfg.MODEL.ATSS, key, value)
    return GLIPATSSProposalGenerator(cfg, _shapes(P2_P6))


def test_anchors_sit_at_the_strides_of_the_features_read():
    """On P2-P6 (strides 4..64) the anchors were laid out at ATSS's 8..128: every anchor at twice
    its position, the P2 grid of a 1024 px image spanning 2048 px."""
    head = _generator_on_p2_p6().head
    assert head.anchor_strides == [4, 8, 16, 32, 64]
    assert head.anchor_sizes == [32, 64, 128, 256, 512]  # ATSS's 8 strides, as on P3-P7
    grids = [(1024 // s, 1024 // s) for s in head.anchor_strides]
    anchors = grid_anchors(head.anchor_sizes, head.anchor_strides, grids)
    for a, s in zip(anchors, head.anchor_strides):
        centres = (a[:, :2] + a[:, 2:]) / 2
        assert centres.max().item() == pytest.approx(1024 - (s + 1) / 2)  # last cell's centre
        assert (a[:, 2] - a[:, 0] + 1).unique().tolist() == [8.0 * s]


def test_p3_p7_configs_keep_their_anchors():
    """The shapes demo reads P3-P7, the strides ATSS's defaults are written for: the anchors are
    exactly those of MODEL.ATSS.ANCHOR_SIZES / ANCHOR_STRIDES."""
    cfg = _cfg()
    assert list(cfg.MODEL.RPN.IN_FEATURES) == ["p3", "p4", "p5", "p6", "p7"]
    head = build_model(cfg).proposal_generator.head
    assert head.anchor_strides == list(cfg.MODEL.ATSS.ANCHOR_STRIDES) == [8, 16, 32, 64, 128]
    assert head.anchor_sizes == list(cfg.MODEL.ATSS.ANCHOR_SIZES) == [64, 128, 256, 512, 1024]
    grids = [(28, 28), (14, 14), (7, 7), (4, 4), (2, 2)]
    for got, want in zip(
        grid_anchors(head.anchor_sizes, head.anchor_strides, grids),
        grid_anchors(cfg.MODEL.ATSS.ANCHOR_SIZES, cfg.MODEL.ATSS.ANCHOR_STRIDES, grids),
    ):
        assert torch.equal(got, want)
    # sizes set by a P3-P7 config (the one-stage demo's 4 strides) stay as written
    cfg.MODEL.ATSS.ANCHOR_SIZES = [32, 64, 128, 256, 512]
    assert build_model(cfg).proposal_generator.head.anchor_sizes == [32, 64, 128, 256, 512]


def test_atss_anchor_settings_against_the_features_read():
    # sizes set in the config are used as written, at the features' strides
    head = _generator_on_p2_p6(ANCHOR_SIZES=[16, 32, 64, 128, 256]).head
    assert head.anchor_strides == [4, 8, 16, 32, 64]
    assert head.anchor_sizes == [16, 32, 64, 128, 256]
    # strides set to the features' are taken
    head = _generator_on_p2_p6(ANCHOR_STRIDES=[4, 8, 16, 32, 64]).head
    assert head.anchor_strides == [4, 8, 16, 32, 64]
    # strides set to anything else would misplace every anchor: refused, with the fix
    with pytest.raises(ValueError, match=r"ANCHOR_STRIDES to \[4, 8, 16, 32, 64\]"):
        _generator_on_p2_p6(ANCHOR_STRIDES=[8, 16, 32, 64, 96])
    # what "left at the default" means is the config's default
    cfg = get_cfg()
    add_glip_config(cfg)
    assert list(cfg.MODEL.ATSS.ANCHOR_STRIDES) == glip_rpn._DEFAULT_ATSS_STRIDES
    assert list(cfg.MODEL.ATSS.ANCHOR_SIZES) == glip_rpn._DEFAULT_ATSS_SIZES


def test_optional_head_losses_train_under_rpn_names():
    """PHRASE_LOSS_WEIGHT, TOKEN_SOFTMAX_LOSS_WEIGHT and GLIP.LOSSES.CONTRASTIVE_WEIGHT raised a
    KeyError ('loss_phrase') in the fixed three-name renaming."""
    cfg = _cfg()
    cfg.MODEL.ATSS.PHRASE_LOSS_WEIGHT = 1.0
    cfg.MODEL.ATSS.TOKEN_SOFTMAX_LOSS_WEIGHT = 1.0
    cfg.MODEL.GLIP.LOSSES.CONTRASTIVE_WEIGHT = 1.0
    torch.manual_seed(0)
    model = build_model(cfg).train()
    inputs = batch(model)
    with EventStorage():
        losses = model(inputs)
    assert set(losses) == {
        "loss_rpn_cls", "loss_rpn_loc", "loss_rpn_centerness", "loss_rpn_phrase",
        "loss_rpn_token_softmax", "loss_rpn_contrastive", "loss_cls", "loss_box_reg",
    }
    assert all(math.isfinite(v.item()) and v.item() > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    grad = model.proposal_generator.head.scorer.bias_lang.grad
    assert grad is not None and grad.abs().sum() > 0
    # an image without boxes next to one with a box
    inputs = [make_input(model, CAPTION, [], [], seed=0),
              make_input(model, CAPTION, [[10, 20, 70, 90]], SPANS[:1], seed=1)]
    with EventStorage():
        losses = model(inputs)
    assert all(math.isfinite(v.item()) for v in losses.values()), losses


def test_a_grounding_caption_and_a_vocabulary_in_one_batch():
    """A grounding caption is one prompt, the vocabulary (chunk size 1) three: torch.stack over
    the images failed. Each image gets the proposals it gets in a batch of its own."""
    torch.manual_seed(0)
    model = build_model(_cfg()).eval()
    model.set_vocabulary(["red circle", "blue square", "green triangle"], chunk_size=1)
    assert len(model._chunks) == 3
    images = [{k: x[k] for k in ("image", "height", "width")} for x in batch(model)]
    grounding = dict(images[0], caption=CAPTION, phrase_spans=[[list(s)] for s in SPANS])
    seen = []
    hook = model.proposal_generator.register_forward_hook(lambda m, a, out: seen.append(out[0]))
    with torch.no_grad():
        mixed = model([grounding, images[1]])
        model([grounding])
        model([images[1]])
    hook.remove()
    assert len(mixed) == 2 and len(seen[0]) == 2
    for together, alone in zip(seen[0], [seen[1][0], seen[2][0]]):
        assert len(together) == len(alone) > 0
        torch.testing.assert_close(together.proposal_boxes.tensor, alone.proposal_boxes.tensor,
                                   rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(together.objectness_logits, alone.objectness_logits,
                                   rtol=1e-4, atol=1e-4)
