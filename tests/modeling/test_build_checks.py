"""Configurations refused when the model is built, not at the first forward or evaluation:
one-stage GLIP's pyramid levels (MODEL.GLIP.IN_FEATURES consecutive, finest first, as the
VL-DyHead tower mixes neighbours; MODEL.ATSS.ANCHOR_STRIDES their strides), unknown score
aggregations, TEXT_BOX_HEAD.PREDICT without a head."""
import pytest
from detectron2.modeling import build_model

from tests.helpers import tiny_cfg


def test_levels_out_of_order_are_refused_at_build_naming_the_key():
    cfg = tiny_cfg()
    cfg.MODEL.GLIP.IN_FEATURES = ["p4", "p3", "p5", "p6", "p7"]
    # before: built, then "stack expects each tensor to be equal size" at the first forward
    with pytest.raises(ValueError, match=r"MODEL.GLIP.IN_FEATURES .* strides \[16, 8, 32, 64, 128\]"):
        build_model(cfg)


def test_anchor_strides_that_are_not_the_features_are_refused_with_the_right_values():
    cfg = tiny_cfg()
    cfg.MODEL.ATSS.ANCHOR_STRIDES = [4, 8, 16, 32, 64]  # a P2-P6 habit on this P3-P7 backbone
    # before: accepted, every anchor at half its position
    with pytest.raises(ValueError, match=r"Set MODEL.ATSS.ANCHOR_STRIDES to \[8, 16, 32, 64, 128\]"):
        build_model(cfg)


def test_consecutive_levels_with_their_strides_build():
    cfg = tiny_cfg()
    cfg.MODEL.GLIP.IN_FEATURES = ["p4", "p5", "p6"]
    cfg.MODEL.ATSS.ANCHOR_STRIDES = [16, 32, 64]
    cfg.MODEL.ATSS.ANCHOR_SIZES = [128, 256, 512]
    model = build_model(cfg)
    assert model.in_features == ["p4", "p5", "p6"]
    assert model.head.anchor_strides == [16, 32, 64]


def test_an_unknown_score_aggregation_is_refused_at_build_not_at_the_first_evaluation():
    cfg = tiny_cfg()
    cfg.MODEL.ATSS.SCORE_AGG = "MEDIAN"
    with pytest.raises(ValueError, match=r"MODEL.ATSS.SCORE_AGG 'MEDIAN' is not one of"):
        build_model(cfg)


def test_an_unknown_roi_score_aggregation_is_refused_at_build():
    from tests.roi.roi_helpers import two_stage_cfg

    cfg = two_stage_cfg()
    cfg.MODEL.LANGUAGE_ROI_HEADS.SCORE_AGG = "MEAN_LOGIT"  # a one-stage mode only
    with pytest.raises(ValueError, match=r"MODEL.LANGUAGE_ROI_HEADS.SCORE_AGG 'MEAN_LOGIT'"):
        build_model(cfg)


def test_text_box_predict_without_a_text_box_head_is_refused():
    # it was ignored: a referring-expression evaluation scored the grounding detections instead
    cfg = tiny_cfg()
    cfg.MODEL.GLIP.TEXT_BOX_HEAD.PREDICT = True
    with pytest.raises(ValueError, match="TEXT_BOX_HEAD.PREDICT .*TEXT_BOX_HEAD.NAME is empty"):
        build_model(cfg)
