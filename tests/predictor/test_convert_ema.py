"""The convert command and the EMA weights of a checkpoint (glip_d2 "ema", official "model_ema").

A conversion keeps what the input evaluates: a glip_d2 training checkpoint's "ema" (evaluated
with TEST.USE_EMA) stays next to "model" in a .pth; ``--weights ema`` writes the EMA weights as
the output's "model"; every input entry that is not written is named in the report, with why.
"""


import pytest
import torch
from detectron2.modeling import build_model

from glip_d2.checkpoint import GLIPCheckpointer, convert
from glip_d2.engine import load_eval_weights
from tests.helpers import tiny_cfg
from tests.predictor.test_convert import _assert_same, _same_sd, _zeroed, to_official

TRAINING_STATE = "training state, not needed to load the weights"


@pytest.fixture(scope="module")
def tiny(module_tmp):
    """A tiny GLIP's weights, EMA weights that differ from them, and training checkpoints."""
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg).eval()
    root = module_tmp("convert_ema")
    cfg_file = root / "tiny.yaml"
    cfg_file.write_text(cfg.dump())
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ema = {k: v + 0.5 if v.is_floating_point() else v.clone() for k, v in sd.items()}
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    param.sum().backward()
    opt.step()
    training = {
        "optimizer": opt.state_dict(),
        "scheduler": {"last_epoch": 99},
        "iteration": 99,
    }
    # as Detectron2's checkpointer writes it during train_net.py with SOLVER.EMA_DECAY > 0
    glip_d2 = root / "model_0000099.pth"
    torch.save(dict({"model": sd, "ema": ema}, **training), glip_d2)
    plain = root / "no_ema.pth"
    torch.save(dict({"model": sd}, **training), plain)
    # an official GLIP release: maskrcnn-benchmark names, the EMA as "model_ema"
    official = root / "official.pth"
    torch.save(
        dict({"model": to_official(sd), "model_ema": to_official(ema, prefix="")}, **training),
        official,
    )
    return {
        "cfg": cfg,
        "cfg_file": str(cfg_file),
        "sd": sd,
        "ema": ema,
        "glip_d2": str(glip_d2),
        "plain": str(plain),
        "official": str(official),
        "root": root,
    }


@pytest.fixture(scope="module")
def target(tiny):
    return build_model(tiny["cfg"]).eval()


def _load_pth(path):
    return torch.load(path, weights_only=True)


def test_pth_output_keeps_the_ema_and_evaluates_like_the_input(tiny, target, capsys):
    out = str(tiny["root"] / "kept.pth")
    assert convert.main([tiny["glip_d2"], out, "--config", tiny["cfg_file"]]) == 0
    printed = capsys.readouterr().out
    ckpt = _load_pth(out)
    assert list(ckpt) == ["model", "ema"]
    _same_sd(ckpt["model"], tiny["sd"])
    _same_sd(ckpt["ema"], tiny["ema"])
    # the training state is named, with why, in the report and in its text
    assert "optimizer, scheduler, iteration: " + TRAINING_STATE in printed
    assert "EMA weights kept as 'ema' (evaluated with TEST.USE_EMA)" in printed
    assert "EMA keys missing with respect to the config's model: 0" in printed
    # TEST.USE_EMA evaluates the EMA, as it did with the input; without it the raw weights
    for use_ema, expected in ((True, tiny["ema"]), (False, tiny["sd"])):
        model = _zeroed(target)
        extra = GLIPCheckpointer(model).load(out)
        assert load_eval_weights(model, extra, use_ema) == ("ema" if use_ema else "model")
        _assert_same(model, expected)


def test_report_lists_every_entry_not_written(tiny):
    report = convert.convert_checkpoint(tiny["glip_d2"], str(tiny["root"] / "r.pth"))
    assert report["weights"] == "model" and report["ema_tensors"] == len(tiny["ema"])
    assert report["dropped"] == [
        ("optimizer", TRAINING_STATE),
        ("scheduler", TRAINING_STATE),
        ("iteration", TRAINING_STATE),
    ]
    # the existing keys stay
    assert report["source"] == "glip_d2" and report["num_tensors"] == len(tiny["sd"])
    assert report["kept"] == {} and report["ignored"] == [] and report["unmapped"] == []


def test_a_prefixed_ema_is_written_under_the_models_own_keys(tiny):
    """Earlier glip_d2 versions saved the EMA of a multi-process run with DDP's "module."."""
    src = str(tiny["root"] / "ddp_ema.pth")
    torch.save({"model": tiny["sd"], "ema": {"module." + k: v for k, v in tiny["ema"].items()}},
               src)
    out = str(tiny["root"] / "ddp_ema_out.pth")
    convert.convert_checkpoint(src, out)
    _same_sd(_load_pth(out)["ema"], tiny["ema"])


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_weights_ema_writes_the_ema_as_the_model(tiny, target, capsys, ext):
    out = str(tiny["root"] / f"ema_as_model{ext}")
    assert convert.main([tiny["glip_d2"], out, "--weights", "ema",
                         "--config", tiny["cfg_file"]]) == 0
    printed = capsys.readouterr().out
    if ext == ".pth":
        ckpt = _load_pth(out)
        assert list(ckpt) == ["model"]
        _same_sd(ckpt["model"], tiny["ema"])
    else:
        from safetensors.torch import load_file

        _same_sd(load_file(out), tiny["ema"])
    assert "model: the raw weights" in printed
    model = _zeroed(target)
    GLIPCheckpointer(model).load(out)
    _assert_same(model, tiny["ema"])
    report = convert.convert_checkpoint(tiny["glip_d2"], out, weights="ema")
    assert report["weights"] == "ema" and report["ema_tensors"] == 0
    assert [k for k, _ in report["dropped"]] == ["model", "optimizer", "scheduler", "iteration"]


def test_safetensors_output_says_the_ema_is_not_written(tiny, capsys):
    out = str(tiny["root"] / "model_only.safetensors")
    assert convert.main([tiny["glip_d2"], out]) == 0
    printed = capsys.readouterr().out
    assert ("ema: not written (a .safetensors file holds one state dict); --weights ema writes "
            "the EMA weights instead") in printed
    from safetensors.torch import load_file

    _same_sd(load_file(out), tiny["sd"])
    report = convert.convert_checkpoint(tiny["glip_d2"], out)
    assert report["ema_tensors"] == 0 and "ema" in dict(report["dropped"])


def test_official_model_ema_is_reported_by_default_and_written_with_weights_ema(tiny, capsys):
    out = str(tiny["root"] / "official_out.pth")
    # default: "model", as official GLIP's test scripts evaluate it
    assert convert.main([tiny["official"], out, "--config", tiny["cfg_file"]]) == 0
    printed = capsys.readouterr().out
    ckpt = _load_pth(out)
    assert list(ckpt) == ["model"]
    _same_sd(ckpt["model"], tiny["sd"])
    assert ("model_ema: the official EMA; official GLIP and glip_d2 evaluate 'model' "
            "(--weights ema writes it instead)") in printed
    assert "optimizer, scheduler, iteration: " + TRAINING_STATE in printed
    # --weights ema: the official EMA through the same renaming as "model"
    report = convert.convert_checkpoint(tiny["official"], out, tiny["cfg_file"], weights="ema")
    ckpt = _load_pth(out)
    assert list(ckpt) == ["model"]
    _same_sd(ckpt["model"], tiny["ema"])
    assert report["weights"] == "model_ema" and report["source"] == "official"
    assert report["prefix"] == "" and len(report["ignored"]) == 7 and report["unmapped"] == []
    assert report["missing"] == [] and report["unexpected"] == []
    assert [k for k, _ in report["dropped"]] == ["model", "optimizer", "scheduler", "iteration"]


def test_weights_ema_without_an_ema_is_a_clear_error(tiny, capsys):
    out = tiny["root"] / "never.pth"
    with pytest.raises(ValueError) as e:
        convert.convert_checkpoint(tiny["plain"], str(out), weights="ema")
    msg = str(e.value)
    assert tiny["plain"] in msg and "no EMA weights" in msg
    assert "model, optimizer, scheduler, iteration" in msg
    assert not out.exists()
    assert convert.main([tiny["plain"], str(out), "--weights", "ema"]) == 1
    assert "no EMA weights" in capsys.readouterr().err and not out.exists()
    with pytest.raises(ValueError, match="weights must be 'model' or 'ema'"):
        convert.convert_checkpoint(tiny["glip_d2"], str(out), weights="raw")
    assert not out.exists()


def test_an_ema_that_does_not_fit_the_config_is_refused(tiny, capsys):
    ema = dict(tiny["ema"])
    key = "head.bbox_pred.weight"
    ema[key] = torch.zeros(ema[key].shape[0] + 1, *ema[key].shape[1:])
    src = str(tiny["root"] / "bad_ema.pth")
    torch.save({"model": tiny["sd"], "ema": ema}, src)
    out = tiny["root"] / "bad_ema_out.pth"
    with pytest.raises(ValueError, match=r"EMA.*another shape.*head\.bbox_pred\.weight"):
        convert.convert_checkpoint(src, str(out), tiny["cfg_file"])
    assert not out.exists()
    assert convert.main([src, str(out), "--config", tiny["cfg_file"]]) == 1
    assert "head.bbox_pred.weight" in capsys.readouterr().err and not out.exists()
    # without a config nothing is checked against a model
    assert convert.main([src, str(out)]) == 0 and out.exists()


def test_an_ema_with_non_tensor_values_is_refused(tiny):
    src = str(tiny["root"] / "odd_ema.pth")
    torch.save({"model": tiny["sd"], "ema": dict(tiny["ema"], step=3)}, src)
    out = tiny["root"] / "odd_ema_out.pth"
    with pytest.raises(ValueError, match=r"'ema'.*non-tensor values, e\.g\. 'step'"):
        convert.convert_checkpoint(src, str(out))
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*.tmp"))  # no temporary file left either
