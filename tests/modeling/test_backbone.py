"""Swin backbone, GLIP's FPN and the official key map; parity with the official GLIP-T backbone."""

import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from glip_d2.config import add_glip_config
from glip_d2.modeling.backbone import (
    GLIPFPN,
    SwinTransformer,
    build_retinanet_style_fpn,
    build_swin_fpn_retinanet_backbone,
    convert_official_backbone_state_dict,
)

PARITY_DIR = Path(
    os.environ.get("GLIP_PARITY_DIR", Path(__file__).resolve().parents[3] / "shared" / "parity")
)
KEYS_FILE = PARITY_DIR / "official_keys_glip_t.txt"
FIXTURE = PARITY_DIR / "glip_t_parity.npz"
RECIPE = PARITY_DIR / "weights_recipe.py"

TINY = dict(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=7)
ALL_STAGES = ["stage2", "stage3", "stage4", "stage5"]


def _cfg(**swin):
    cfg = get_cfg()
    add_glip_config(cfg)
    for k, v in swin.items():
        cfg.MODEL.SWIN[k.upper()] = v
    return cfg


def _official_keys():
    """[(key without 'module.', shape, dtype, kind)] of the official `backbone.*` entries."""
    if not KEYS_FILE.is_file():
        pytest.skip(
            f"official key list not found at {KEYS_FILE} (../shared/parity beside the repo)"
        )
    rows = []
    for line in KEYS_FILE.read_text(encoding="utf-8").splitlines():
        key, shape, dtype, kind = line.split("\t")
        key = key[len("module.") :]
        if key.startswith("backbone."):
            rows.append((key, json.loads(shape), dtype, kind))
    return rows


# ------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("hw", [(224, 320), (200, 296)])
def test_tiny_swin_output_shapes(hw):
    torch.manual_seed(0)
    model = SwinTransformer(**TINY, out_features=ALL_STAGES).eval()
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        out = model(x)
    shapes = model.output_shape()
    assert list(out) == ALL_STAGES
    for i, name in enumerate(ALL_STAGES):
        stride = 4 * 2**i
        assert shapes[name].stride == stride
        assert shapes[name].channels == 32 * 2**i
        expected = (1, 32 * 2**i, math.ceil(hw[0] / stride), math.ceil(hw[1] / stride))
        assert tuple(out[name].shape) == expected
        assert torch.isfinite(out[name]).all()


def test_swin_out_features_subset():
    model = SwinTransformer(**TINY, out_features=["stage3", "stage4"]).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert list(out) == ["stage3", "stage4"]
    assert list(model.output_shape()) == ["stage3", "stage4"]
    assert not hasattr(model, "norm0") and not hasattr(model, "norm3")
    with pytest.raises(ValueError, match="out_features"):
        SwinTransformer(**TINY, out_features=["res5"])


@pytest.mark.parametrize("hw", [(224, 320), (200, 296)])
def test_swin_fpn_output_shapes(hw):
    torch.manual_seed(0)
    cfg = _cfg(**TINY)
    cfg.MODEL.BACKBONE.NAME = "build_swin_fpn_retinanet_backbone"
    model = build_backbone(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *hw))
    assert list(out) == ["p3", "p4", "p5", "p6", "p7"]
    h, w = hw
    for level in range(3, 8):
        spec = model.output_shape()[f"p{level}"]
        assert (spec.channels, spec.stride) == (256, 2**level)
        # Every level halves the previous one with ceil (Swin pads, P6/P7 are stride-2 convs).
        h, w = math.ceil(h / (8 if level == 3 else 2)), math.ceil(w / (8 if level == 3 else 2))
        assert tuple(out[f"p{level}"].shape) == (1, 256, h, w)
    assert model.size_divisibility == 32


def test_glip_fpn_matches_detectron2_fpn_on_divisible_sizes():
    torch.manual_seed(0)
    swin = SwinTransformer(**TINY).eval()
    ours = GLIPFPN(
        bottom_up=swin,
        in_features=["stage3", "stage4", "stage5"],
        out_channels=64,
        top_block=LastLevelP6P7(64, 64, in_feature="p5"),
    ).eval()
    ref = FPN(
        bottom_up=swin,
        in_features=["stage3", "stage4", "stage5"],
        out_channels=64,
        top_block=LastLevelP6P7(64, 64, in_feature="p5"),
    ).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 192, 256)
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert list(a) == list(b) == ["p3", "p4", "p5", "p6", "p7"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Detectron2's scale_factor=2 upsampling cannot follow a 13-row lateral with a 7-row P5.
    with torch.no_grad():
        ours(torch.randn(1, 3, 200, 296))
        with pytest.raises(RuntimeError):
            ref(torch.randn(1, 3, 200, 296))


def test_retinanet_style_fpn_over_resnet():
    cfg = _cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    resnet = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    model = build_retinanet_style_fpn(resnet, ["res3", "res4", "res5"], cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 160))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p3": (16, 20),
        "p4": (8, 10),
        "p5": (4, 5),
        "p6": (2, 3),
        "p7": (1, 2),
    }


# ------------------------------------------------------------------------------ freezing


def _frozen_names(model):
    return {n for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize(
    "freeze_at, frozen_prefixes",
    [
        (-1, []),
        (0, []),
        (1, ["patch_embed."]),
        (2, ["patch_embed.", "layers.0."]),
        (3, ["patch_embed.", "layers.0.", "layers.1."]),
        (5, ["patch_embed.", "layers.0.", "layers.1.", "layers.2.", "layers.3."]),
    ],
)
def test_freeze_at(freeze_at, frozen_prefixes):
    model = SwinTransformer(
        **{**TINY, "depths": [2, 2, 2, 2]}, drop_path_rate=0.5, freeze_at=freeze_at
    )
    expected = {n for n, _ in model.named_parameters() if n.startswith(tuple(frozen_prefixes))}
    assert _frozen_names(model) == expected
    # Output norms and later stages stay trainable.
    assert not any(n.startswith("norm") for n in _frozen_names(model))
    model.train()
    frozen_stages = [i for i in range(4) if f"layers.{i}." in frozen_prefixes]
    for i, layer in enumerate(model.layers):
        for blk in layer.blocks:
            assert blk.training == (i not in frozen_stages)
    assert model.patch_embed.training == (freeze_at < 1)
    # Frozen stages have no stochastic depth in training: same output twice.
    if freeze_at >= 2:
        x = torch.randn(1, 3, 64, 64)
        stage0 = model.layers[0]
        tokens = torch.randn(1, 16 * 16, 32)
        assert torch.equal(stage0(tokens, 16, 16)[0], stage0(tokens, 16, 16)[0])
        model(x)["stage5"].sum().backward()
        assert all(p.grad is None for p in model.layers[0].parameters())
        assert all(p.grad is not None for p in model.norm3.parameters())


def test_freeze_from_config():
    model = SwinTransformer(_cfg(**TINY, FREEZE_AT=2), ShapeSpec(channels=3))
    assert model.freeze_at == 2
    assert _frozen_names(model) == {
        n for n, _ in model.named_parameters() if n.startswith(("patch_embed.", "layers.0."))
    }


# ------------------------------------------------------------------------------ checkpointing


def test_gradient_checkpointing_same_outputs_and_grads():
    kwargs = dict(**{**TINY, "depths": [2, 2, 2, 2]}, drop_path_rate=0.3, out_features=ALL_STAGES)
    torch.manual_seed(0)
    plain = SwinTransformer(**kwargs, use_checkpoint=False).train()
    ckpt = SwinTransformer(**kwargs, use_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    assert all(layer.use_checkpoint for layer in ckpt.layers)
    x = torch.randn(2, 3, 96, 128)
    results = []
    for model in (plain, ckpt):
        torch.manual_seed(123)  # same stochastic-depth draws
        out = model(x)
        loss = sum((v * torch.linspace(0, 1, v.numel()).view_as(v)).sum() for v in out.values())
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append(({k: v.detach() for k, v in out.items()}, grads))
    (out_a, grads_a), (out_b, grads_b) = results
    for k in out_a:
        torch.testing.assert_close(out_a[k], out_b[k], rtol=0, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for n in grads_a:
        torch.testing.assert_close(grads_a[n], grads_b[n], rtol=1e-5, atol=1e-6, msg=n)


def test_checkpointing_skips_frozen_stages():
    model = SwinTransformer(**TINY, freeze_at=3, use_checkpoint=True)
    assert [layer.use_checkpoint for layer in model.layers] == [False, False, True, True]


# ------------------------------------------------------------------------------ official keys


def test_swin_t_matches_official_keys_shapes_and_param_count():
    rows = _official_keys()
    model = build_swin_fpn_retinanet_backbone(_cfg(), ShapeSpec(channels=3))
    official = {k: torch.empty(shape) for k, shape, _, _ in rows}
    converted = convert_official_backbone_state_dict(official)
    ours = model.state_dict()
    assert set(converted) == set(ours)
    for k, v in converted.items():
        assert tuple(v.shape) == tuple(ours[k].shape), k

    def count(prefix):
        return sum(
            math.prod(s) for k, s, _, kind in rows if kind == "param" and k.startswith(prefix)
        )

    assert sum(p.numel() for p in model.bottom_up.parameters()) == count("backbone.body.")
    assert sum(p.numel() for p in model.parameters()) == count("backbone.")
    assert count("backbone.body.") == 27_520_506


def test_converter_names_and_unknown_key():
    sd = {
        "backbone.body.layers.2.blocks.5.attn.qkv.weight": torch.zeros(1),
        "backbone.body.norm3.bias": torch.zeros(1),
        "backbone.fpn.fpn_inner2.weight": torch.zeros(1),
        "backbone.fpn.fpn_layer4.bias": torch.zeros(1),
        "backbone.fpn.top_blocks.p7.weight": torch.zeros(1),
    }
    assert list(convert_official_backbone_state_dict(sd)) == [
        "bottom_up.layers.2.blocks.5.attn.qkv.weight",
        "bottom_up.norm3.bias",
        "fpn_lateral3.weight",
        "fpn_output5.bias",
        "top_block.p7.weight",
    ]
    with pytest.raises(KeyError, match="module."):
        convert_official_backbone_state_dict({"module.backbone.body.norm1.weight": torch.zeros(1)})


# ------------------------------------------------------------------------------ parity


def _load_recipe():
    spec = importlib.util.spec_from_file_location("glip_parity_weights_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parity_with_official_glip_t_backbone():
    """Swin-T + FPN on the recipe weights reproduces the official C3..C5 and P3..P7."""
    if not (FIXTURE.is_file() and RECIPE.is_file() and KEYS_FILE.is_file()):
        pytest.skip(f"parity fixture not found in {PARITY_DIR} (../shared/parity beside the repo)")
    recipe = _load_recipe()
    # Only the backbone's learned tensors; int64 relative_position_index buffers are model-built.
    official = {
        key: recipe.recipe_tensor(key, shape)
        for key, shape, dtype, _ in _official_keys()
        if dtype == "float32"
    }
    model = build_swin_fpn_retinanet_backbone(_cfg(), ShapeSpec(channels=3)).eval()
    sd = convert_official_backbone_state_dict(official)
    own = model.state_dict()
    built = {k for k in own if k not in sd}
    assert built and all(k.endswith("attn.relative_position_index") for k in built)
    sd.update({k: own[k] for k in built})
    model.load_state_dict(sd, strict=True)

    fixture = np.load(FIXTURE, allow_pickle=False)
    stages = {}
    model.bottom_up.register_forward_hook(lambda module, inputs, output: stages.update(output))
    with torch.no_grad():
        pyramid = model(torch.from_numpy(fixture["input_tensor"]))

    ours = {f"swin_C{i}": stages[f"stage{i}"] for i in (3, 4, 5)}
    ours.update({f"fpn_P{i}": pyramid[f"p{i}"] for i in range(3, 8)})
    for name, value in ours.items():
        ref = torch.from_numpy(fixture[name])
        assert value.shape == ref.shape, name
        rel = ((value - ref).abs().max() / ref.abs().max()).item()
        assert rel <= 1e-5, f"{name}: max abs diff / max abs ref = {rel:.3g}"
