"""MODEL.DYHEAD.DEFORM_IMPL: the gather form of the modulated deformable conv equals torchvision's
kernel (forward to the bit, gradients to float rounding), and "auto" picks it for CPU training only."""

import pytest
import torch
from torchvision.ops import deform_conv2d

from detectron2.config import get_cfg

from glip_d2.config import add_glip_config
from glip_d2.modeling.fusion.deform import ModulatedDeformConv3x3, deform_conv3x3_by_gather


def _inputs(h, w, stride, seed=0, spread=3.0, c=8, cout=6):
    g = torch.Generator().manual_seed(seed)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    x = torch.randn(2, c, h, w, generator=g)
    # offsets of several pixels push taps past every border; some land exactly on pixels
    offset = torch.randn(2, 18, ho, wo, generator=g) * spread
    offset[:, :4] = offset[:, :4].round()
    mask = torch.rand(2, 9, ho, wo, generator=g)
    weight = torch.randn(cout, c, 3, 3, generator=g) * 0.1
    bias = torch.randn(cout, generator=g)
    return [t.requires_grad_() for t in (x, offset, mask, weight, bias)]


def _run(fn, tensors):
    for t in tensors:
        t.grad = None
    out = fn()
    # a loss that weighs every output differently, so wrong gradient routing shows
    (out * torch.linspace(-1, 2, out.numel()).view_as(out)).sum().backward()
    return out.detach(), [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("h,w,stride,spread", [(9, 13, 1, 3.0), (10, 7, 2, 3.0), (1, 6, 1, 2.0), (5, 5, 1, 12.0)])
def test_gather_equals_torchvision_forward_exactly_and_backward_to_rounding(h, w, stride, spread):
    x, offset, mask, weight, bias = tensors = _inputs(h, w, stride, spread=spread)
    ref, ref_grads = _run(lambda: deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask), tensors)
    out, grads = _run(lambda: deform_conv3x3_by_gather(x, offset, weight, bias, stride, mask), tensors)
    assert out.shape == ref.shape
    assert torch.equal(out, ref)
    for name, a, b in zip(("x", "offset", "mask", "weight", "bias"), grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"gradient of {name}")
    if spread > 10:  # where every tap moves 8+ pixels, off the 5x5 image, the output is the bias
        far = (offset.detach().abs() > 8).view(2, 9, 2, *offset.shape[-2:]).any(2).all(1)
        assert far.any()
        at_far = out.permute(0, 2, 3, 1)[far]
        assert torch.equal(at_far, bias.detach().expand_as(at_far))


def test_gather_gradients_pass_gradcheck_in_float64():
    x, offset, mask, weight, bias = (t.detach().double().requires_grad_() for t in _inputs(4, 5, 1, c=2, cout=2))
    # keep the taps off pixel borders, where the bilinear weights are not differentiable
    with torch.no_grad():
        offset.copy_(offset.floor() + 0.25 + 0.5 * torch.rand_like(offset))
    assert torch.autograd.gradcheck(
        lambda *t: deform_conv3x3_by_gather(t[0], t[1], t[3], t[4], 1, t[2]), (x, offset, mask, weight, bias)
    )


def test_half_precision_is_sampled_at_float32_coordinates():
    x, offset, mask, weight, bias = (t.detach() for t in _inputs(40, 60, 1, spread=20.0))
    exact = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    out = deform_conv3x3_by_gather(x.bfloat16(), offset.bfloat16(), weight.bfloat16(), bias.bfloat16(), 1,
                                   mask.bfloat16())
    assert out.dtype == torch.bfloat16
    # the error of bfloat16 values, not of taps read from the wrong pixel
    torch.testing.assert_close(out.float(), exact, rtol=0.05, atol=0.15)


def test_auto_uses_gather_only_when_training_on_the_cpu(monkeypatch):
    calls = []
    import glip_d2.modeling.fusion.deform as deform

    real = deform.deform_conv3x3_by_gather
    monkeypatch.setattr(deform, "deform_conv3x3_by_gather", lambda *a: calls.append(1) or real(*a))
    conv = ModulatedDeformConv3x3(8, 8)
    x, offset, mask = (t.detach() for t in _inputs(6, 6, 1)[:3])
    with torch.no_grad():
        inference = conv(x, offset, mask)
    assert calls == []
    trained = conv(x, offset, mask)
    assert calls == [1]
    assert torch.equal(inference, trained.detach())
    conv.requires_grad_(False)
    conv(x, offset, mask)  # frozen conv, input without gradient: nothing to differentiate
    assert calls == [1]
    assert ModulatedDeformConv3x3(8, 8, impl="torchvision").impl == "torchvision"
    with pytest.raises(ValueError, match="DEFORM_IMPL 'cuda'.*auto"):
        ModulatedDeformConv3x3(8, 8, impl="cuda")


def test_the_config_key_reaches_every_deformable_conv():
    from glip_d2.modeling.fusion import VLDyHeadTower

    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.MODEL.DYHEAD.NUM_CONVS = 1
    cfg.MODEL.DYHEAD.CHANNELS = 16
    cfg.MODEL.DYHEAD.GN_GROUPS = 4
    cfg.MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON = False
    cfg.MODEL.DYHEAD.DEFORM_IMPL = "gather"
    tower = VLDyHeadTower(cfg, language_dim=32)
    impls = [m.impl for m in tower.modules() if isinstance(m, ModulatedDeformConv3x3)]
    assert impls == ["gather"] * 3


def test_the_deform_benchmark_lists_every_dyhead_conv_shape_and_equal_forwards(tmp_path):
    import importlib
    import json
    import sys
    from pathlib import Path

    bench_dir = str(Path(__file__).resolve().parents[2] / "benchmarks")
    sys.path.insert(0, bench_dir)
    try:
        bench = importlib.import_module("bench_deform")
    finally:
        sys.path.remove(bench_dir)
    # five levels of a 40x72 image (5x9 ... 1x1), each at stride 1, and four stride-2 convs
    assert bench._shapes(40, 72) == [(5, 9, 1), (3, 5, 1), (2, 3, 1), (1, 2, 1), (1, 1, 1),
                                     (5, 9, 2), (3, 5, 2), (2, 3, 2), (1, 2, 2)]
    bench.main(["--size", "40", "72", "--channels", "4", "--iters", "1", "--threads", "0",
                "--out-dir", str(tmp_path)])
    res = json.loads((tmp_path / "cpu_deform_conv.json").read_text())
    assert [row["input"] + [row["stride"]] for row in res["shapes"]] == [list(s) for s in bench._shapes(40, 72)]
    assert all(row["forward_equal"] for row in res["shapes"])
    assert res["total_gather_backward_ms"] > 0 and res["device"] == "cpu"


def test_training_through_the_module_recomputes_the_columns_instead_of_keeping_them():
    gathered = ModulatedDeformConv3x3(8, 8, impl="gather")
    kernel = ModulatedDeformConv3x3(8, 8, impl="torchvision")
    kernel.load_state_dict(gathered.state_dict())
    x, offset, mask = (t.detach().requires_grad_() for t in _inputs(20, 20, 1)[:3])
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = gathered(x, offset, mask)
    columns_bytes = 2 * 8 * 9 * 20 * 20 * 4  # one copy of the sampled columns (batch 2, float32)
    assert sum(saved) < columns_bytes  # without the recompute: about 6 copies
    ref = kernel(x, offset, mask)
    assert torch.equal(out, ref)
    grads = torch.autograd.grad(out.square().sum(), (x, offset, mask, gathered.weight))
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, offset, mask, kernel.weight))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
