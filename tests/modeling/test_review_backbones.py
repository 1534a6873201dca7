"""Review of the image backbones: Swin config checks, stochastic depth at rate 1, window locality
on sizes that are not window multiples, and GLIP on Detectron2's stock ResNet-FPN backbones."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from glip_d2.config import add_glip_config
from glip_d2.modeling.backbone import SwinTransformer
from glip_d2.modeling.backbone.swin import DropPath, SwinStage, shifted_window_mask
from tests.helpers import make_input, tiny_cfg

TINY = dict(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=7)


# ------------------------------------------------------------------------------ config checks


def test_num_heads_that_do_not_divide_the_width_are_refused():
    # Before: built, then failed at the first forward with "shape '[9, 49, 3, 3, 10]' is invalid".
    with pytest.raises(ValueError, match=r"NUM_HEADS\[0\] = 3 does not divide the width 32"):
        SwinTransformer(**{**TINY, "num_heads": [3, 6, 12, 24]})
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.MODEL.SWIN.EMBED_DIM = 32
    cfg.MODEL.SWIN.DEPTHS = [1, 1, 1, 1]
    cfg.MODEL.SWIN.NUM_HEADS = [1, 2, 4, 6]  # 256 is not a multiple of 6
    with pytest.raises(ValueError, match=r"NUM_HEADS\[3\] = 6 .* stage5"):
        SwinTransformer(cfg, ShapeSpec(channels=3))


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_drop_path_rate_outside_unit_interval_is_refused(rate):
    # Before: -0.1 silently meant no stochastic depth; 1.5 failed in training inside bernoulli_.
    with pytest.raises(ValueError, match="DROP_PATH_RATE must be in"):
        SwinTransformer(**TINY, drop_path_rate=rate)


def test_window_size_below_one_is_refused():
    with pytest.raises(ValueError, match="WINDOW_SIZE must be >= 1"):
        SwinTransformer(**{**TINY, "window_size": 0})


def test_drop_path_rate_one_drops_the_branch_instead_of_nan():
    # Before: keep_prob 0 divided the all-zero mask by 0, so the last block gave NaN.
    x = torch.randn(4, 5, 3)
    drop = DropPath(1.0).train()
    assert torch.equal(drop(x), torch.zeros_like(x))
    torch.manual_seed(0)
    model = SwinTransformer(**{**TINY, "depths": [1, 1, 1, 2]}, drop_path_rate=1.0).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert all(torch.isfinite(v).all() for v in out.values())
    # Only the last block has rate 1 (linear schedule): stage5 is its input through norm3 alone.
    last = model.layers[3]
    tokens = torch.randn(1, 4, 256)
    torch.testing.assert_close(last.blocks[1](tokens, 2, 2, None), tokens, rtol=0, atol=0)


# ------------------------------------------------------------------------------ windows


@pytest.mark.parametrize("hw", [(9, 11), (13, 6)])
def test_shifted_windows_on_padded_maps_attend_within_their_region_only(hw):
    """A token changed outside a query's (shifted) window region leaves the query unchanged;
    one inside it changes it, on maps that are padded to window multiples and cropped back."""
    torch.manual_seed(0)
    H, W = hw
    ws = 4
    stage = SwinStage(
        dim=8, depth=2, num_heads=2, window_size=ws, mlp_ratio=2.0, drop_path=[0.0, 0.0],
        downsample=False,
    ).eval()
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    shift = ws // 2

    def region(i, j, shifted):
        """(window id, region id) of token (i, j) as the block groups them."""
        if not shifted:
            return (i // ws, j // ws), 0
        # Rolled coordinates; the region is the official 3x3 split of the padded map.
        ri, rj = (i - shift) % Hp, (j - shift) % Wp

        def part(v, size):
            return 0 if v < size - ws else (1 if v < size - shift else 2)

        return (ri // ws, rj // ws), (part(ri, Hp), part(rj, Wp))

    x = torch.randn(1, H * W, 8)
    mask = shifted_window_mask(Hp, Wp, ws, shift, x.device, x.dtype)
    for b, blk in enumerate(stage.blocks):
        shifted = blk.shift_size > 0
        with torch.no_grad():
            ref = blk(x, H, W, mask)
        q = (H - 1, W - 1)  # bottom-right token: in the padded and (if shifted) wrapped part
        same, other = [], []
        for i in range(H):
            for j in range(W):
                if (i, j) != q:
                    (same if region(i, j, shifted) == region(*q, shifted) else other).append((i, j))
        assert same and other
        for (i, j), expect_change in [(other[0], False), (other[-1], False), (same[0], True)]:
            y = x.clone().view(1, H, W, 8)
            y[0, i, j] += 5.0 * torch.randn(8)  # not a constant: LayerNorm would remove it
            with torch.no_grad():
                out = blk(y.view(1, H * W, 8), H, W, mask)
            changed = not torch.allclose(out.view(1, H, W, 8)[0, q[0], q[1]],
                                         ref.view(1, H, W, 8)[0, q[0], q[1]], rtol=0, atol=1e-6)
            assert changed == expect_change, (b, (i, j))


# ------------------------------------------------------------------------------ stock backbones


def _stock_cfg(name):
    cfg = tiny_cfg()
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    if name == "build_retinanet_resnet_fpn_backbone":  # P3-P7, P6 from C5
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    else:  # P2-P6, P6 by max pooling
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
        cfg.MODEL.GLIP.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
        cfg.MODEL.ATSS.ANCHOR_STRIDES = [4, 8, 16, 32, 64]
    cfg.MODEL.FPN.IN_FEATURES = cfg.MODEL.RESNETS.OUT_FEATURES
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0  # an untrained model scores below the usual 0.05
    return cfg


@pytest.mark.parametrize(
    "name", ["build_retinanet_resnet_fpn_backbone", "build_resnet_fpn_backbone"]
)
def test_glip_trains_and_predicts_on_stock_resnet_fpn(name):
    torch.manual_seed(0)
    cfg = _stock_cfg(name)
    model = build_model(cfg).train()
    shapes = model.backbone.output_shape()
    assert [shapes[f].stride for f in model.in_features] == list(cfg.MODEL.ATSS.ANCHOR_STRIDES)
    assert {shapes[f].channels for f in model.in_features} == {cfg.MODEL.DYHEAD.CHANNELS}
    inp = make_input(model, "red circle. blue square", [[10, 10, 60, 70]], [(0, 10)], (96, 130))
    losses = model([inp])
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0
    total.backward()
    assert model.backbone.fpn_lateral4.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model([{"image": inp["image"], "height": 96, "width": 130}])[0]["instances"]
    assert out.image_size == (96, 130)
    assert len(out) > 0 and (out.pred_boxes.tensor[:, 2:] <= torch.tensor([130, 96])).all()


def test_glip_on_stock_resnet_fpn_rejects_missing_levels():
    cfg = _stock_cfg("build_resnet_fpn_backbone")
    cfg.MODEL.GLIP.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]  # this FPN stops at p6
    with pytest.raises(ValueError, match=r"\['p7'\] are not produced"):
        build_model(cfg)


def test_levels_of_another_width_than_the_head_are_refused_at_build():
    """FPN.OUT_CHANNELS other than DYHEAD.CHANNELS failed at the first forward with a LayerNorm
    shape error."""
    cfg = _stock_cfg("build_retinanet_resnet_fpn_backbone")
    cfg.MODEL.FPN.OUT_CHANNELS = 2 * cfg.MODEL.DYHEAD.CHANNELS
    with pytest.raises(ValueError, match=r"IN_FEATURES \{'p3': 128, .* do not have "
                                         r"MODEL.DYHEAD.CHANNELS = 64 channels.*FPN.OUT_CHANNELS"):
        build_model(cfg)


def test_a_stock_fpn_gets_the_padding_it_needs_whatever_size_divisibility():
    """With SIZE_DIVISIBILITY 0 or 16 the batch was padded below the stock FPN's stride 32 (its
    levels are added, so their sizes must halve exactly): a 96x130 image failed."""
    for own, expected in ((0, (96, 160)), (16, (96, 160)), (48, (96, 192))):
        cfg = _stock_cfg("build_resnet_fpn_backbone")
        cfg.MODEL.GLIP.SIZE_DIVISIBILITY = own
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        x = make_input(model, "red circle", [[10, 10, 60, 70]], [(0, 10)], (96, 130))
        assert tuple(model.preprocess_image([x]).tensor.shape[-2:]) == expected
        with torch.no_grad():
            assert model([{"image": x["image"]}])[0]["instances"].image_size == (96, 130)
