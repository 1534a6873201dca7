"""Loading checkpoints into a config they do not exactly fit: a GLIP checkpoint fine-tuned into
other head options (partial_init_ok), Detectron2's ``?matching_heuristics=True`` suffix, and
model-zoo ``.pkl`` files converted once with ``python -m glip_d2.checkpoint.convert``."""

import contextlib
import logging
import pickle

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from glip_d2.checkpoint import GLIPCheckpointer, check_variant, convert
from tests.reliability.helpers import fast_tiny_cfg, write_cfg


@pytest.fixture(scope="module")
def tiny(module_tmp):
    """The demo GLIP (no box pooling, as in tiny_cfg), the same with MODEL.ATSS.REGION_POOL 4,
    and a checkpoint of each. Tests load into models of their own (these two stay as saved)."""
    root = module_tmp("loading")
    cfg = fast_tiny_cfg()
    assert cfg.MODEL.ATSS.REGION_POOL == 0
    pooled_cfg = cfg.clone()
    pooled_cfg.MODEL.ATSS.REGION_POOL = 4
    torch.manual_seed(0)
    base = build_model(cfg).eval()
    torch.manual_seed(1)
    pooled = build_model(pooled_cfg).eval()
    paths = {}
    for name, model in (("base", base), ("pooled", pooled)):
        paths[name] = str(root / f"{name}.pth")
        torch.save({"model": model.state_dict()}, paths[name])
    return {"cfg": cfg, "pooled_cfg": pooled_cfg, "base": base, "pooled": pooled, "paths": paths,
            "root": root}


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def _warnings():
    """The checkpointer's warnings (a handler of its own: Detectron2's setup_logger may have
    turned propagation to the root logger off)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    log = logging.getLogger("glip_d2.checkpoint.checkpointer")
    log.addHandler(handler)
    try:
        yield records
    finally:
        log.removeHandler(handler)


# ------------------------------------------------------------------ head options (issue item 1)
def test_a_head_option_added_by_the_config_fine_tunes_but_is_refused_for_inference(tiny):
    model, base = build_model(tiny["pooled_cfg"]).eval(), tiny["base"].state_dict()
    before = _snapshot(model)
    with pytest.raises(ValueError) as err:
        GLIPCheckpointer(model).load(tiny["paths"]["base"])
    message = str(err.value)
    assert "The checkpoint and the model the config builds are both a custom GLIP (Swin" in message
    assert "grounding heads differ in head.region_pool (MODEL.ATSS.REGION_POOL" in message
    assert "4 model tensors the checkpoint lacks (head.region_pool.read.bias, " in message
    assert "head.region_pool.reduce.weight" in message and "partial_init_ok=True" in message
    assert "but the config builds" not in message  # not two identical descriptions
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded

    with _warnings() as records:
        GLIPCheckpointer(model, partial_init_ok=True).load(tiny["paths"]["base"])
    own = model.state_dict()
    assert set(own) - set(base) == {
        "head.region_pool.read.bias", "head.region_pool.read.weight",
        "head.region_pool.reduce.bias", "head.region_pool.reduce.weight",
    }
    assert all(torch.equal(own[k], v) for k, v in base.items())  # every shared tensor
    assert all(torch.equal(own[k], before[k]) for k in set(own) - set(base))  # initialisation
    logged = "\n".join(r.getMessage() for r in records)
    assert "head.region_pool (MODEL.ATSS.REGION_POOL" in logged
    assert "start from their initialisation" in logged and "head.region_pool.read.weight" in logged


def test_a_head_module_the_config_drops_is_logged_and_the_rest_loads(tiny):
    model = build_model(tiny["cfg"]).eval()
    pooled = tiny["pooled"].state_dict()
    with pytest.raises(ValueError, match=r"4 checkpoint tensors the model lacks \(head\.region_po"):
        GLIPCheckpointer(model).load(tiny["paths"]["pooled"])
    with _warnings() as records:
        GLIPCheckpointer(model, partial_init_ok=True).load(tiny["paths"]["pooled"])
    own = model.state_dict()
    assert all(torch.equal(v, pooled[k]) for k, v in own.items())
    logged = "\n".join(r.getMessage() for r in records)
    assert "this config does not build are dropped: head.region_pool" in logged


def test_a_head_tensor_of_another_shape_fine_tunes_too(tiny):
    """e.g. MODEL.ATSS.REGION_POOL_CHANNELS changed: the pooled read-out has another shape."""
    sd = dict(tiny["pooled"].state_dict())
    sd["head.region_pool.reduce.weight"] = torch.zeros(8, 64, 1, 1)
    shapes = r"head\.region_pool\.reduce\.weight \(checkpoint \(8, 64, 1, 1\) vs model \(16, "
    with pytest.raises(ValueError, match=r"another shape: " + shapes):
        check_variant(tiny["pooled"], sd)
    check_variant(tiny["pooled"], sd, partial_init_ok=True)


def test_architecture_mismatches_are_refused_even_when_fine_tuning(tiny):
    model, sd = tiny["base"], tiny["base"].state_dict()
    wider = dict(sd, **{"backbone.bottom_up.patch_embed.proj.weight": torch.zeros(48, 3, 4, 4)})
    with pytest.raises(ValueError, match=r"checkpoint is a custom GLIP \(Swin embed dim 48.*"
                                         r"config builds a custom GLIP \(Swin embed dim 32"):
        check_variant(model, wider, partial_init_ok=True)
    unfused = {k: v for k, v in sd.items() if ".fuse." not in k}  # a tower without deep fusion
    with pytest.raises(ValueError, match=r"deep fusion off.*deep fusion on.*"
                                         r"model tensors the checkpoint lacks \(head\.tower\."):
        check_variant(model, unfused, partial_init_ok=True)
    # same description, another layer: the message says so and names the tensor
    fpn = dict(sd, **{"backbone.fpn_output3.weight": torch.zeros(1, 1, 1, 1)})
    with pytest.raises(ValueError) as err:
        check_variant(model, fpn, partial_init_ok=True)
    assert "are both a custom GLIP" in str(err.value) and "their layers differ" in str(err.value)
    assert "backbone.fpn_output3.weight (checkpoint (1, 1, 1, 1) vs model" in str(err.value)


# ------------------------------------------------------------ ?matching_heuristics (issue item 2)
def test_matching_heuristics_query_loads_backbone_weights_saved_without_the_prefix(tiny):
    model = build_model(tiny["cfg"]).eval()
    bare = {k[len("backbone."):]: v.clone() + 1 for k, v in tiny["base"].state_dict().items()
            if k.startswith("backbone.")}
    path = str(tiny["root"] / "bare_backbone.pth")
    torch.save({"model": bare}, path)
    with pytest.raises(ValueError, match=r"provides 0\.0% of the model"):  # names do not match
        GLIPCheckpointer(model, partial_init_ok=True).load(path)
    GLIPCheckpointer(model, partial_init_ok=True).load(path + "?matching_heuristics=True")
    own = model.state_dict()
    assert all(torch.equal(own["backbone." + k], v) for k, v in bare.items())


def test_an_unsupported_query_is_a_clear_error_and_the_checkpointer_still_works(tmp_path):
    net = nn.Sequential(nn.Linear(4, 3))
    path = str(tmp_path / "net.pth")
    torch.save({"model": net.state_dict()}, path)
    checkpointer = GLIPCheckpointer(net)
    with pytest.raises(ValueError, match=r"Unsupported query bogus in the checkpoint path "
                                         r".*net\.pth\?bogus=1'\. The only query .*"
                                         r"'\?matching_heuristics=True'"):
        checkpointer.load(path + "?bogus=1")
    with pytest.raises(ValueError, match=r"matching_heuristics='yes' .* is not True or False"):
        checkpointer.load(path + "?matching_heuristics=yes")
    checkpointer.load(path)  # a refused path leaves no state behind
    checkpointer.load(path + "?matching_heuristics=False")


# ------------------------------------------------------------ converted .pkl files (issue item 3)
class _Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.bottom_up = _Backbone()


def _loaded(path):
    torch.manual_seed(5)
    model = _Model()
    GLIPCheckpointer(model).load(path)
    return model.state_dict()


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_a_converted_torchvision_pkl_loads_like_the_pkl(tmp_path, capsys, ext):
    torch.manual_seed(0)
    weights = {k: v.numpy() for k, v in _Backbone().state_dict().items()}  # no "backbone." names
    src = str(tmp_path / "tv.pkl")
    with open(src, "wb") as f:
        pickle.dump({"model": weights, "__author__": "torchvision", "matching_heuristics": True},
                    f, protocol=2)
    out = str(tmp_path / f"tv{ext}")
    assert convert.main([src, out]) == 0
    assert "Kept from the input: __author__='torchvision', matching_heuristics=True" in \
        capsys.readouterr().out
    if ext == ".pth":
        ckpt = torch.load(out, weights_only=True)
        assert ckpt["__author__"] == "torchvision" and ckpt["matching_heuristics"] is True
    else:
        from safetensors import safe_open

        with safe_open(out, framework="pt") as f:
            meta = f.metadata()
        assert meta["__author__"] == "torchvision" and meta["matching_heuristics"] == "True"
    direct, converted = _loaded(src), _loaded(out)
    assert set(converted) == set(direct) == {"backbone.bottom_up." + k for k in weights}
    for k, v in direct.items():
        assert torch.equal(converted[k], v) and np.array_equal(
            v.numpy(), weights[k[len("backbone.bottom_up."):]]), k


def test_a_converted_caffe2_blobs_pkl_keeps_its_renaming(tmp_path):
    net = nn.Module()
    net.stem = nn.Module()
    net.stem.conv1 = nn.Conv2d(3, 4, 3, bias=False)  # C2 "conv1_w" is renamed to this
    src = str(tmp_path / "c2.pkl")
    with open(src, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.ones((4, 3, 3, 3), np.float32)}}, f, protocol=2)
    out = str(tmp_path / "c2.pth")
    assert convert.main([src, out]) == 0
    assert torch.load(out, weights_only=True)["__author__"] == "Caffe2"
    GLIPCheckpointer(net).load(out)
    assert torch.equal(net.stem.conv1.weight, torch.ones(4, 3, 3, 3))


def test_safetensors_refuses_an_entry_it_cannot_carry(tmp_path, capsys):
    src = str(tmp_path / "odd.pkl")
    with open(src, "wb") as f:
        pickle.dump({"model": {"w": np.ones(2, np.float32)}, "__author__": 3}, f, protocol=2)
    out = tmp_path / "odd.safetensors"
    assert convert.main([src, str(out)]) == 1
    assert "__author__ is a int, not a string" in capsys.readouterr().err and not out.exists()
    assert convert.main([src, str(tmp_path / "odd.pth")]) == 0
    assert torch.load(tmp_path / "odd.pth", weights_only=True)["__author__"] == 3


def test_convert_with_config_checks_the_names_the_heuristics_give(tiny, capsys):
    """A full GLIP .pkl whose backbone names lack "backbone.": the config check matches names as
    the checkpointer will, instead of refusing a checkpoint that loads."""
    sd = tiny["base"].state_dict()
    weights = {(k[len("backbone."):] if k.startswith("backbone.") else k): v.numpy()
               for k, v in sd.items()}
    src = str(tiny["root"] / "bare_full.pkl")
    with open(src, "wb") as f:
        pickle.dump({"model": weights, "__author__": "someone", "matching_heuristics": True}, f)
    cfg_file = write_cfg(tiny["cfg"], tiny["root"] / "tiny.yaml")
    out = str(tiny["root"] / "bare_full.pth")
    assert convert.main([src, out, "--config", cfg_file]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "Keys missing with respect to the config's model: 0" in printed
    model = build_model(tiny["cfg"]).eval()
    GLIPCheckpointer(model).load(out)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
