"""README claims of "Two-stage models" and "Self-training and RegionCLIP", checked literally."""

import pytest

from glip_d2.modeling.proposal_generator.glip_rpn import anchor_layout
from tests.roi.test_review_selftrain import assert_refused_before_the_teacher

P2_P6 = ["p2", "p3", "p4", "p5", "p6"]
DEFAULT_SIZES = [64, 128, 256, 512, 1024]  # MODEL.ATSS.ANCHOR_SIZES as add_glip_config sets it


def test_glip_rpn_default_anchor_sizes_are_8_strides_when_the_strides_are_set_to_the_features():
    """README: "MODEL.ATSS.ANCHOR_SIZES left at its default becomes 8 x stride". A P2-P6 config
    that sets ANCHOR_STRIDES to its features' strides (as the stride error tells it to) and
    leaves the sizes kept GLIP's P3-P7 sizes: anchors of 16 strides (64 px on P2), twice ATSS's."""
    strides, sizes = anchor_layout(P2_P6, [4, 8, 16, 32, 64], [4, 8, 16, 32, 64], DEFAULT_SIZES)
    assert strides == [4, 8, 16, 32, 64]
    assert sizes == [32, 64, 128, 256, 512]
    # the same whether the strides are left at the default or set to the features'
    assert anchor_layout(P2_P6, [4, 8, 16, 32, 64], [8, 16, 32, 64, 128], DEFAULT_SIZES) == (
        strides, sizes)
    # four levels P3-P6 with their strides set: one size per level (was five: a build error)
    assert anchor_layout(P2_P6[1:], [8, 16, 32, 64], [8, 16, 32, 64], DEFAULT_SIZES) == (
        [8, 16, 32, 64], [64, 128, 256, 512])
    # GLIP's P3-P7 keep their anchors; sizes set in the config are used as written
    assert anchor_layout(["p3", "p4", "p5", "p6", "p7"], [8, 16, 32, 64, 128],
                         [8, 16, 32, 64, 128], DEFAULT_SIZES) == ([8, 16, 32, 64, 128],
                                                                   DEFAULT_SIZES)
    assert anchor_layout(P2_P6, [4, 8, 16, 32, 64], [4, 8, 16, 32, 64],
                         [16, 32, 64, 128, 256])[1] == [16, 32, 64, 128, 256]
    with pytest.raises(ValueError, match="ANCHOR_STRIDES"):
        anchor_layout(P2_P6, [4, 8, 16, 32, 64], [8, 16, 32, 64, 96], DEFAULT_SIZES)


@pytest.mark.parametrize("part_size", ["0", "-3"])
def test_pseudo_label_refuses_a_part_size_below_1_before_the_teacher(part_size, tmp_path, monkeypatch):
    """--part-size 0 was refused only after the teacher was built and its weights loaded (minutes
    for GLIP-L), unlike the other numbers (--shard, --num-shards, --score-thresh)."""
    assert_refused_before_the_teacher(monkeypatch, tmp_path, ["--part-size", part_size], "--part-size")


def _regionclip_student(**kwargs):
    """The tiny stand-in RegionCLIP student of test_regionclip_inputs, with `kwargs` set."""
    import torch
    from detectron2.modeling.poolers import ROIPooler

    from glip_d2.regionclip import RegionCLIPPretrainer
    from tests.roi.test_regionclip_inputs import _Backbone, _BoxHead, _Teacher

    torch.manual_seed(0)
    args = dict(
        backbone=_Backbone(), proposal_generator=None, box_in_features=["p2"],
        box_pooler=ROIPooler(output_size=2, scales=(0.25,), sampling_ratio=0,
                             pooler_type="ROIAlignV2"),
        box_head=_BoxHead(), teacher=_Teacher(), concepts=["cat", "dog", "sofa"],
        pixel_mean=[100.0, 110.0, 120.0], pixel_std=[50.0, 50.0, 50.0],
    )
    args.update(kwargs)
    return RegionCLIPPretrainer(**args).train()


@pytest.mark.parametrize(
    "key, value",
    [("proposals_per_image", 0), ("proposals_per_image", -1), ("temperature", 0.0),
     ("distill_temperature", -0.01), ("image_text_temperature", 0.0)],
)
def test_regionclip_refuses_settings_that_train_nothing_or_nan(key, value):
    """MODEL.REGIONCLIP.PROPOSALS_PER_IMAGE 0 trained no region (both region losses 0), -1 silently
    dropped each image's last proposal ([:-1]); a temperature of 0 made the logits inf and the
    losses NaN. Each is refused at build, naming the key."""
    import torch
    from detectron2.utils.events import EventStorage

    from tests.roi.test_regionclip_inputs import _inputs

    key_name = {"proposals_per_image": "PROPOSALS_PER_IMAGE", "temperature": "TEMPERATURE",
                "distill_temperature": "DISTILL_TEMPERATURE",
                "image_text_temperature": "IMAGE_TEXT_TEMPERATURE"}[key]
    with pytest.raises(ValueError, match=rf"MODEL\.REGIONCLIP\.{key_name}\b"):
        _regionclip_student(**{key: value})
    # the accepted values train: finite losses over every proposal
    student = _regionclip_student(proposals_per_image=2)
    with EventStorage():
        losses = student(_inputs(["a cat", "a dog"]))
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
