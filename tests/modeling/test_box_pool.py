"""MODEL.ATSS.REGION_POOL: box-pooled region features for the one-stage scorer."""
import pytest
import torch
from detectron2.modeling import build_model

from glip_d2.modeling.heads import box_coder
from glip_d2.modeling.heads.anchors import grid_anchors
from glip_d2.modeling.heads.box_pool import BoxPooledRegions
from tests.helpers import make_input, tiny_cfg


def test_pools_the_regressed_box_in_a_k_by_k_layout():
    """Features that hold their own input-pixel x / y coordinates: RoIAlign of a linear map is
    exact, so bin (i, j) of the pooled box must read the bin centre of the *regressed* box."""
    stride, h, w, k = 8, 6, 7, 2
    pool = BoxPooledRegions(2, bins=k)
    xs = (torch.arange(w) + 0.5) * stride
    ys = (torch.arange(h) + 0.5) * stride
    feats = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w)])[None]  # (1, 2, H, W)
    anchors = grid_anchors([16], [stride], [(h, w)])[0]
    deltas = torch.zeros(1, 4, h, w)
    loc = 3 * w + 3  # location (y=3, x=3)
    deltas[0, :, 3, 3] = torch.tensor([1.0, -0.5, 0.5, 0.0])  # shift and widen its box
    with torch.no_grad():  # read out bin values raw: out channel = x of bin (0, 0)
        pool.read.weight.zero_()
        pool.read.weight[0, 0] = 1.0  # channel 0 (x), bin (0, 0)
        pool.read.weight[1, 2 * k * k - 1] = 1.0  # channel 1 (y), bin (1, 1)
    out = pool(feats, deltas, anchors, stride)
    box = box_coder.from_official(box_coder.decode(deltas[0, :, 3, 3][None], anchors[loc][None]))[0]
    x0, y0, x1, y1 = box.tolist()
    bw, bh = (x1 - x0) / k, (y1 - y0) / k
    point = feats[0, :, 3, 3]
    torch.testing.assert_close(out[0, loc, 0], point[0] + x0 + 0.5 * bw)
    torch.testing.assert_close(out[0, loc, 1], point[1] + y0 + 1.5 * bh)
    # an unmoved location pools its anchor box
    other = 1 * w + 2
    a = box_coder.from_official(anchors[other])
    torch.testing.assert_close(out[0, other, 0], feats[0, 0, 1, 2] + a[0] + (a[2] - a[0]) / (2 * k))


def _pooled_model(**atss):
    """The tiny model with 2x2 box pooling and the given MODEL.ATSS keys, in training mode."""
    cfg = tiny_cfg()
    cfg.MODEL.ATSS.REGION_POOL = 2
    for key, value in atss.items():
        cfg.MODEL.ATSS[key] = value
    torch.manual_seed(0)
    return cfg, build_model(cfg).train()


def test_region_pool_option_in_the_head():
    _, model = _pooled_model(REGION_POOL_CHANNELS=16)
    plain = build_model(tiny_cfg())
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == [
        "head.region_pool.read.bias", "head.region_pool.read.weight",
        "head.region_pool.reduce.bias", "head.region_pool.reduce.weight",
    ]
    assert not unexpected
    x = make_input(model, "red circle", [[10, 20, 90, 100]], [(0, 3)])
    losses = model([x])
    losses["loss_cls"].backward()
    read = model.head.region_pool.read
    assert read.weight.grad.abs().sum() > 0  # the naming loss trains the read-out
    # the box is detached: the naming loss does not move the box regression
    grad = model.head.bbox_pred.weight.grad
    assert grad is None or grad.abs().sum() == 0
    model.eval()
    model.head.test_args["score_thresh"] = 0.0  # untrained: every score is near the prior
    with torch.no_grad():
        out = model([{k: v for k, v in x.items() if k != "instances"}])
    assert len(out[0]["instances"]) > 0


def test_region_pool_rejects_zero_bins():
    with pytest.raises(ValueError, match="REGION_POOL"):
        BoxPooledRegions(8, bins=0)


def test_mlp_read_out_width():
    pool = BoxPooledRegions(8, bins=3, hidden=16)
    assert pool.hidden[0].in_features == 8 * 9 and pool.read.in_features == 16
    feats = torch.randn(2, 8, 5, 6)
    anchors = grid_anchors([32], [8], [(5, 6)])[0]
    out = pool(feats, torch.zeros(2, 4, 5, 6), anchors, 8)
    assert out.shape == (2, 30, 8)
    with torch.no_grad():  # a zero read-out leaves the point features
        pool.read.weight.zero_()
        torch.testing.assert_close(pool(feats, torch.zeros(2, 4, 5, 6), anchors, 8),
                                   feats.flatten(2).transpose(1, 2))


def test_batched_pooling_equals_roi_align_inside_the_map():
    from torchvision.ops import roi_align

    from glip_d2.modeling.heads.box_pool import pool_boxes

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 5, 9, 11, generator=g)
    lo = torch.rand(2, 7, 2, generator=g) * 12 + 2  # the map covers 44 x 36 px
    boxes = torch.cat([lo, lo + torch.rand(2, 7, 2, generator=g) * 18 + 2], dim=-1)  # px, stride 4
    for k, s in ((2, 2), (3, 1), (4, 2)):
        ours = pool_boxes(feats, boxes / 4, k, s)
        rois = torch.cat([torch.arange(2).repeat_interleave(7)[:, None].float(), boxes.reshape(-1, 4)], 1)
        ref = roi_align(feats, rois, k, 0.25, s, aligned=True).view(2, 7, 5, k, k)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_reduced_channels_pool_the_1x1_projection():
    torch.manual_seed(0)
    pool = BoxPooledRegions(8, bins=2, sampling_ratio=2, reduce_channels=3)
    assert pool.reduce.in_channels == 8 and pool.reduce.out_channels == 3
    assert pool.read.in_features == 3 * 4
    from glip_d2.modeling.heads.box_pool import pool_boxes

    feats = torch.randn(1, 8, 6, 6)
    anchors = grid_anchors([32], [8], [(6, 6)])[0]
    deltas = torch.zeros(1, 4, 6, 6)
    boxes = box_coder.from_official(anchors)[None] / 8
    expected = feats.flatten(2).transpose(1, 2) + pool.read(pool_boxes(pool.reduce(feats), boxes, 2, 2).flatten(2))
    torch.testing.assert_close(pool(feats, deltas, anchors, 8), expected)
    with pytest.raises(ValueError, match="REGION_POOL_SAMPLING"):
        BoxPooledRegions(8, bins=2, sampling_ratio=0)


def test_pools_from_a_finer_source_level():
    """REGION_POOL_FROM_LEVEL: a P4 location's box is pooled from the P3 map (boxes / 8), and
    its point feature stays the P4 one."""
    from glip_d2.modeling.heads.box_pool import pool_boxes

    torch.manual_seed(0)
    pool = BoxPooledRegions(4, bins=2, reduce_channels=3)
    p3, p4 = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4)
    anchors = grid_anchors([64], [16], [(4, 4)])[0]
    deltas = torch.randn(1, 4, 4, 4) * 0.2
    boxes = box_coder.from_official(
        box_coder.decode(deltas.permute(0, 2, 3, 1).reshape(-1, 4), anchors))[None]
    reduced = pool.reduce(p3)  # the caller reduces the source once for every level
    assert reduced.shape[1] == 3
    expected = p4.flatten(2).transpose(1, 2) + pool.read(pool_boxes(reduced, boxes / 8, 2, 1).flatten(2))
    torch.testing.assert_close(pool(p4, deltas, anchors, 16, reduced, 8), expected)
    assert not torch.allclose(pool(p4, deltas, anchors, 16), expected)


def test_head_pools_every_level_from_p3():
    cfg, model = _pooled_model(REGION_POOL_FROM_LEVEL=0, REGION_POOL_CHANNELS=6)
    calls, reductions = [], []
    forward = model.head.region_pool.forward

    def spy(features, box_regression, anchors, stride, *source):
        calls.append((features.shape[-2:], stride, [s.shape[-3:] if torch.is_tensor(s) else s for s in source]))
        return forward(features, box_regression, anchors, stride, *source)

    model.head.region_pool.forward = spy
    model.head.region_pool.reduce.register_forward_hook(lambda m, i, o: reductions.append(o.shape))
    x = make_input(model, "red circle", [[10, 20, 90, 100]], [(0, 3)])
    model([x])["loss_cls"].backward()
    p3 = (6,) + tuple(calls[0][0])  # every level reads the same 6-channel reduction of P3
    assert len(calls) == len(cfg.MODEL.ATSS.ANCHOR_STRIDES)
    assert all(list(src[0]) == list(p3) and src[1] == cfg.MODEL.ATSS.ANCHOR_STRIDES[0] for _, _, src in calls)
    assert len(reductions) == 1  # P3 is reduced once per forward, not once per level
    assert [c[1] for c in calls] == list(cfg.MODEL.ATSS.ANCHOR_STRIDES)
    cfg.MODEL.ATSS.REGION_POOL_FROM_LEVEL = 5
    with pytest.raises(ValueError, match="REGION_POOL_FROM_LEVEL"):
        build_model(cfg)
