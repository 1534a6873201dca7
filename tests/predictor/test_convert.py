"""Official GLIP checkpoints -> glip_d2 names: key tables, the checkpointer and the convert command.

Full-size models are built on the meta device (shapes only), so these tests stay fast.
"""

import contextlib
import functools
import re
import warnings
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from glip_d2 import add_glip_config
from glip_d2.checkpoint import (
    GLIPCheckpointer,
    check_variant,
    convert,
    convert_official_state_dict,
    describe_variant,
    to_glip_d2_state_dict,
)
from tests.helpers import tiny_cfg

OFFICIAL_KEYS = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "parity" / "official_keys_glip_t.txt"
)

# glip_d2 -> official, written independently of glip_d2.checkpoint's tables.
INVERSE_PREFIXES = [
    ("backbone.bottom_up.", "backbone.body."),
    ("backbone.fpn_lateral3.", "backbone.fpn.fpn_inner2."),
    ("backbone.fpn_lateral4.", "backbone.fpn.fpn_inner3."),
    ("backbone.fpn_lateral5.", "backbone.fpn.fpn_inner4."),
    ("backbone.fpn_output3.", "backbone.fpn.fpn_layer2."),
    ("backbone.fpn_output4.", "backbone.fpn.fpn_layer3."),
    ("backbone.fpn_output5.", "backbone.fpn.fpn_layer4."),
    ("backbone.top_block.", "backbone.fpn.top_blocks."),
    ("language_backbone.model.", "language_backbone.body.model."),
    ("head.scorer.proj_text.", "rpn.head.dot_product_projection_text."),
    ("head.scorer.", "rpn.head."),
    ("head.bbox_pred.", "rpn.head.bbox_pred."),
    ("head.centerness.", "rpn.head.centerness."),
    ("head.scales.", "rpn.head.scales."),
]
# tower sub-module -> (its position in an official fused triple, [(glip_d2 regex, official)])
INVERSE_TOWER = {
    "fuse": (0, [
        (r"^norm_(v|l)\.", r"b_attn.layer_norm_\1."),
        (r"^gamma_(v|l)$", r"b_attn.gamma_\1"),
        (r"^attn\.", "b_attn.attn."),
    ]),
    "text_layer": (1, [
        (r"^(query|key|value)\.", r"attention.self.\1."),
        (r"^attn_out\.", "attention.output.dense."),
        (r"^attn_norm\.", "attention.output.LayerNorm."),
        (r"^ffn_in\.", "intermediate.dense."),
        (r"^ffn_out\.", "output.dense."),
        (r"^ffn_norm\.", "output.LayerNorm."),
    ]),
    "dyconv": (2, [
        (r"^convs\.(\d)\.conv\.", r"DyConv.\1.conv."),
        (r"^convs\.(\d)\.norm\.", r"DyConv.\1.bn."),
        (r"^scale_attn\.", "AttnConv.1."),
        (r"^dyrelu\.fc\.", "relu.fc."),
        (r"^offset\.", "offset."),
    ]),
}  # fmt: skip
_TOWER = re.compile(r"^head\.tower\.blocks\.(\d+)\.(fuse|text_layer|dyconv)\.(.*)$")


def to_official_key(key: str, fused: bool) -> str:
    m = _TOWER.match(key)
    if m:
        block, sub, rest = int(m.group(1)), m.group(2), m.group(3)
        pos, table = INVERSE_TOWER[sub]
        for pat, rep in table:
            new, n = re.subn(pat, rep, rest)
            if n:
                return f"rpn.head.dyhead_tower.{3 * block + pos if fused else block}.{new}"
        raise AssertionError(f"no inverse rule for {key}")
    for ours, theirs in INVERSE_PREFIXES:
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    raise AssertionError(f"no inverse rule for {key}")


def to_official(sd, num_classes=80, prefix="module."):
    """An official-layout state dict from a glip_d2 one, plus the official-only tensors."""
    fused = any(".fuse." in k for k in sd)
    out = {prefix + to_official_key(k, fused): v for k, v in sd.items()}
    channels = sd["head.bbox_pred.weight"].shape[1]
    out[prefix + "rpn.head.cls_logits.weight"] = torch.zeros(num_classes, channels, 1, 1)
    out[prefix + "rpn.head.cls_logits.bias"] = torch.zeros(num_classes)
    for i in range(5):
        out[prefix + f"rpn.anchor_generator.cell_anchors.{i}"] = torch.zeros(1, 4)
    return out


OFFICIAL_ONLY = {"rpn.head.cls_logits.weight", "rpn.head.cls_logits.bias"} | {
    f"rpn.anchor_generator.cell_anchors.{i}" for i in range(5)
}


def _full_cfg(config):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(config)
    return cfg


@contextlib.contextmanager
def meta_friendly_swin():
    """Swin computes its drop-path schedule with tensor.item(), which the meta device cannot do
    (build_model_skeleton would fall back to a slow CPU build); while models are built here the
    schedule is computed on CPU."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "linspace", functools.partial(torch.linspace, device="cpu"))
        yield


@pytest.fixture(scope="module")
def skeletons():
    """Meta-device GLIP-T(C), GLIP-T(A) and GLIP-L: every key and shape, no memory."""
    with meta_friendly_swin():
        models = {
            name: convert.build_model_skeleton(_full_cfg(f"configs/{name}.yaml"))
            for name in ("glip_swin_t", "glip_A_swin_t", "glip_swin_l")
        }
    assert all(m.device.type == "meta" for m in models.values())  # no slow CPU fallback
    return models


@pytest.fixture(scope="module")
def official_t():
    """The official GLIP-T(C) key list as zero tensors (stride-0 views: no memory)."""
    if not OFFICIAL_KEYS.is_file():
        pytest.skip(f"official key list not found at {OFFICIAL_KEYS.resolve()}")
    sd = {}
    for line in OFFICIAL_KEYS.read_text().splitlines():
        key, shape, _dtype, _kind = line.split("\t")
        sd[key] = torch.zeros(()).expand(*[int(s) for s in shape.strip("[]").split(",") if s])
    return sd


def _shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


def _load_strict(model, sd):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "copying into a meta parameter is a no-op"
        return model.load_state_dict(sd, strict=True)


# ------------------------------------------------------------------ key tables (meta models)
def test_official_glip_t_keys_convert_and_load_strict(skeletons, official_t):
    model = skeletons["glip_swin_t"]
    converted, report = convert_official_state_dict(official_t)
    assert report["unmapped"] == []
    assert {k for k, _ in report["ignored"]} == OFFICIAL_ONLY  # unused cls_logits, computed anchors
    assert _shapes(converted) == _shapes(model.state_dict())
    assert len(converted) == len(official_t) - len(OFFICIAL_ONLY) == 738
    _load_strict(model, converted)  # raises on any missing / unexpected key or shape
    assert convert.compare_with_model(model, converted) == {"missing": [], "unexpected": []}
    assert describe_variant(converted).startswith("GLIP-T (B/C) (Swin embed dim 96")


def test_inverse_table_reproduces_the_official_glip_t_key_list(skeletons, official_t):
    ours = to_official(skeletons["glip_swin_t"].state_dict())
    assert list(ours) != [] and _shapes(ours) == _shapes(official_t)


@pytest.mark.parametrize(
    "name,variant", [("glip_A_swin_t", "GLIP-T (A)"), ("glip_swin_l", "GLIP-L")]
)
def test_round_trip_through_official_names(skeletons, name, variant):
    sd = skeletons[name].state_dict()
    official = to_official(sd)
    converted, report = convert_official_state_dict(official)
    assert report["unmapped"] == [] and {k for k, _ in report["ignored"]} == OFFICIAL_ONLY
    assert list(converted) and set(converted) == set(sd)
    fused = name != "glip_A_swin_t"
    assert all(converted[k] is official["module." + to_official_key(k, fused)] for k in sd)
    _load_strict(skeletons[name], converted)
    assert describe_variant(converted).startswith(variant + " (")


def test_module_prefix_pooler_and_position_ids_are_tolerated_and_reported(skeletons, official_t):
    lang = "language_backbone.body.model."
    extra = {
        lang + "pooler.dense.weight": torch.zeros(768, 768),
        lang + "pooler.dense.bias": torch.zeros(768),
        lang + "embeddings.position_ids": torch.arange(512)[None],
    }
    with_prefix = dict(official_t, **{"module." + k: v for k, v in extra.items()})
    without_prefix = {k[len("module.") :]: v for k, v in with_prefix.items()}
    for sd, prefix in ((with_prefix, "module."), (without_prefix, "")):
        converted, report = to_glip_d2_state_dict(sd)
        assert report["source"] == "official" and report["prefix"] == prefix
        ignored = dict(report["ignored"])
        assert set(ignored) == OFFICIAL_ONLY | set(extra)
        assert "pooler" in ignored[lang + "pooler.dense.bias"]
        assert "buffer" in ignored[lang + "embeddings.position_ids"]
        _load_strict(skeletons["glip_swin_t"], converted)


def test_a_key_without_rule_is_reported_not_fatal(official_t):
    sd = dict(official_t)
    sd["module.backbone.fpn.fpn_inner1.weight"] = torch.zeros(256, 96, 1, 1)  # a C2 lateral
    sd["module.rpn.head.token_logits.weight"] = torch.zeros(1)
    converted, report = convert_official_state_dict(sd)
    assert report["unmapped"] == ["backbone.fpn.fpn_inner1.weight", "rpn.head.token_logits.weight"]
    assert len(converted) == 738


def test_glip_l_checkpoint_with_glip_t_config_names_both(skeletons):
    large, _ = convert_official_state_dict(to_official(skeletons["glip_swin_l"].state_dict()))
    with pytest.raises(ValueError) as e:
        check_variant(skeletons["glip_swin_t"], large)
    msg = str(e.value)
    assert re.search(r"checkpoint is GLIP-L .*config builds GLIP-T \(B/C\)", msg), msg
    assert "embed dim 192" in msg and "embed dim 96" in msg and "glip_swin_l.yaml" in msg
    # T(A) (no fusion) into T(C) and the reverse: same shapes, different tower
    tiny_a = skeletons["glip_A_swin_t"].state_dict()
    with pytest.raises(
        ValueError, match=r"GLIP-T \(A\).*GLIP-T \(B/C\).*model tensors the checkpoint lacks"
    ):
        check_variant(skeletons["glip_swin_t"], tiny_a)
    with pytest.raises(
        ValueError, match=r"GLIP-T \(B/C\).*GLIP-T \(A\).*checkpoint tensors the model lacks"
    ):
        check_variant(skeletons["glip_A_swin_t"], skeletons["glip_swin_t"].state_dict())
    check_variant(skeletons["glip_swin_l"], large)
    # a checkpoint without a grounding head (e.g. backbone-only) is not a variant
    check_variant(
        skeletons["glip_swin_t"], {k: v for k, v in large.items() if k.startswith("backbone.")}
    )


def test_fine_tuning_does_not_loosen_the_variant_check(skeletons):
    """partial_init_ok (train_net.py) lets head options differ, not the backbone or the tower."""
    large, _ = convert_official_state_dict(to_official(skeletons["glip_swin_l"].state_dict()))
    with pytest.raises(ValueError, match=r"checkpoint is GLIP-L .*config builds GLIP-T \(B/C\)"):
        check_variant(skeletons["glip_swin_t"], large, partial_init_ok=True)
    with pytest.raises(ValueError, match=r"GLIP-T \(A\).*GLIP-T \(B/C\).*model tensors the chec"):
        check_variant(
            skeletons["glip_swin_t"], skeletons["glip_A_swin_t"].state_dict(), partial_init_ok=True
        )
    with pytest.raises(ValueError, match=r"GLIP-T \(B/C\).*GLIP-T \(A\).*checkpoint tensors the"):
        check_variant(
            skeletons["glip_A_swin_t"], skeletons["glip_swin_t"].state_dict(), partial_init_ok=True
        )


# ------------------------------------------------------------------ files (a tiny real model)
class Custom:
    """Not a tensor: weights_only=True must refuse it."""


@pytest.fixture(scope="module")
def tiny(module_tmp):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg).eval()
    root = module_tmp("convert")
    cfg_file = root / "tiny.yaml"
    cfg_file.write_text(cfg.dump())
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    official = root / "official.pth"
    torch.save({"model": to_official(sd), "iteration": 7}, official)
    return {
        "cfg": cfg,
        "cfg_file": str(cfg_file),
        "sd": sd,
        "official": str(official),
        "root": root,
    }


@pytest.fixture(scope="module")
def target(tiny):
    """A second tiny model that checkpoints are loaded into (zeroed before each use)."""
    return build_model(tiny["cfg"]).eval()


def _zeroed(model):
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.zero_()
    return model


def _same_sd(got, expected):
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


def _assert_same(model, sd):
    _same_sd(model.state_dict(), sd)


def test_checkpointer_loads_an_official_file(tiny, target):
    model = _zeroed(target)
    GLIPCheckpointer(model).load(tiny["official"])
    _assert_same(model, tiny["sd"])


def test_checkpointer_loads_a_ddp_trainer_checkpoint_with_weights_only(tiny, target):
    """A Detectron2 trainer checkpoint (optimizer, scheduler, iteration) saved from a DDP model."""
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([param], lr=1e-3)
    param.sum().backward()
    opt.step()
    path = str(tiny["root"] / "trainer.pth")
    ckpt = {"model": {"module." + k: v for k, v in tiny["sd"].items()}, "iteration": 99}
    torch.save(dict(ckpt, optimizer=opt.state_dict(), scheduler={"last_epoch": 99}), path)
    extra = GLIPCheckpointer(_zeroed(target)).load(path, checkpointables=[])
    _assert_same(target, tiny["sd"])
    assert extra["iteration"] == 99


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_convert_command_writes_a_loadable_file(tiny, target, capsys, ext):
    out = str(tiny["root"] / f"converted{ext}")
    assert convert.main([tiny["official"], out, "--config", tiny["cfg_file"]]) == 0
    printed = capsys.readouterr().out
    assert "official GLIP names, prefix 'module.' removed" in printed
    assert "Ignored official keys: 7" in printed and "rpn.head.cls_logits.weight: unused" in printed
    assert "Unmapped official keys (no rule, dropped): 0" in printed
    assert "Keys missing with respect to the config's model: 0" in printed
    if ext == ".pth":
        ckpt = torch.load(out, weights_only=True)
        assert list(ckpt) == ["model"] and set(ckpt["model"]) == set(tiny["sd"])
    else:
        from safetensors.torch import load_file

        assert set(load_file(out)) == set(tiny["sd"])
    model = _zeroed(target)
    GLIPCheckpointer(model).load(out)
    _assert_same(model, tiny["sd"])


def test_weights_only_refuses_a_pickled_custom_class(tiny, target, capsys):
    path = str(tiny["root"] / "custom.pth")
    torch.save({"model": to_official(tiny["sd"]), "extra": Custom()}, path)
    with pytest.raises(RuntimeError, match=r"refused.*weights_only=True.*--trust-pickle") as err:
        GLIPCheckpointer(target).load(path)
    # one line naming the class, on every torch release (later ones wrap it in several lines of
    # advice with colour codes that say weights_only=False)
    message = str(err.value)
    assert "Custom" in message and "\n" not in message and "\x1b" not in message, message
    out = str(tiny["root"] / "from_custom.pth")
    assert convert.main([path, out]) == 1
    assert "--trust-pickle" in capsys.readouterr().err and not Path(out).exists()
    assert convert.main([path, out, "--trust-pickle"]) == 0
    assert set(torch.load(out, weights_only=True)["model"]) == set(tiny["sd"])


def test_variant_mismatch_through_the_checkpointer_and_the_command(tiny, target, capsys):
    model = target
    wrong = dict(tiny["sd"])
    wrong["backbone.bottom_up.patch_embed.proj.weight"] = torch.zeros(48, 3, 4, 4)
    path = str(tiny["root"] / "wrong.pth")
    torch.save({"model": wrong}, path)
    with pytest.raises(
        ValueError,
        match=r"checkpoint is a custom GLIP \(Swin embed dim 48.*"
        r"config builds a custom GLIP \(Swin embed dim 32",
    ):
        GLIPCheckpointer(model).load(path)
    out = str(tiny["root"] / "never.pth")
    with meta_friendly_swin():
        assert convert.main([tiny["official"], out, "--config", "configs/glip_swin_t.yaml"]) == 1
    err = capsys.readouterr().err
    assert "config builds GLIP-T (B/C)" in err and not Path(out).exists()


def test_unreadable_inputs_and_bad_outputs_are_clear_errors(tiny, target):
    truncated = tiny["root"] / "truncated.pth"
    truncated.write_bytes(Path(tiny["official"]).read_bytes()[:5000])
    with pytest.raises(RuntimeError, match="corrupt, truncated"):
        convert.convert_checkpoint(str(truncated), str(tiny["root"] / "x.pth"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert.convert_checkpoint(str(tiny["root"] / "missing.pth"), str(tiny["root"] / "x.pth"))
    with pytest.raises(ValueError, match=r"must end with one of \('.pth', '.safetensors'\)"):
        convert.convert_checkpoint(tiny["official"], str(tiny["root"] / "x.bin"))
    bad_st = tiny["root"] / "bad.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(RuntimeError, match="safetensors"):
        GLIPCheckpointer(target).load(str(bad_st))
