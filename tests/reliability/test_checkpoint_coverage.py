"""Issue 15, item 4: a checkpoint that provides too little of the model is an error, not a
silently random model (predictor, evaluation, the convert command); training initialisations
that cover one part (a backbone) still load."""

import pytest
import torch
from detectron2.modeling import build_model

from glip_d2.checkpoint import GLIPCheckpointer, check_coverage, convert
from tests.reliability.helpers import fast_tiny_cfg, write_cfg


@pytest.fixture(scope="module")
def tiny(module_tmp):
    torch.manual_seed(0)
    cfg = fast_tiny_cfg()
    model = build_model(cfg).eval()
    root = module_tmp("coverage")
    return {"cfg": cfg, "model": model, "root": root,
            "cfg_file": write_cfg(cfg, root / "tiny.yaml")}


def _save(tiny, name, sd):
    path = tiny["root"] / name
    torch.save({"model": sd}, path)
    return str(path)


def test_unrelated_checkpoint_is_refused_with_what_was_expected_and_found(tiny):
    path = _save(tiny, "unrelated.pth", {"encoder.layer.0.weight": torch.ones(8, 8)})
    before = {k: v.clone() for k, v in tiny["model"].state_dict().items()}
    with pytest.raises(ValueError) as err:
        GLIPCheckpointer(tiny["model"]).load(path)
    message = str(err.value)
    assert "provides 0.0% of the model's parameters (at least 50% needed)" in message
    assert "The model expects" in message and "backbone.bottom_up" in message
    assert "the checkpoint holds 1 tensors such as encoder.layer.0.weight" in message
    assert "0 match by name and shape" in message
    after = tiny["model"].state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # nothing was loaded


def test_predictor_refuses_a_checkpoint_with_no_matching_keys(tiny):
    from glip_d2.predictor import GLIPPredictor

    cfg = tiny["cfg"].clone()
    cfg.MODEL.WEIGHTS = _save(tiny, "nothing.pth", {"foo": torch.zeros(3)})
    with pytest.raises(ValueError, match="provides 0.0% of the model"):
        GLIPPredictor(cfg)


def test_backbone_only_weights_initialise_training_but_not_inference(tiny):
    sd = tiny["model"].state_dict()
    backbone = {k: v.clone() + 1 for k, v in sd.items() if k.startswith("backbone.")}
    path = _save(tiny, "backbone.pth", backbone)
    stats = check_coverage(tiny["model"], backbone, partial_init_ok=True)
    assert 0 < stats["matched"] < 0.5 and stats["used"] == 1.0
    torch.manual_seed(1)
    model = build_model(tiny["cfg"])
    with pytest.raises(ValueError, match="at least 50% needed"):
        GLIPCheckpointer(model).load(path)  # inference: a random head is no model
    GLIPCheckpointer(model, partial_init_ok=True).load(path)  # training initialisation
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in backbone.items())
    # an "initialisation" whose own tensors mostly do not fit is still refused
    junk = dict(backbone, **{f"junk{i}": torch.zeros(10**6) for i in range(5)})
    with pytest.raises(ValueError, match="as an initialisation"):
        check_coverage(tiny["model"], junk, partial_init_ok=True)


def test_half_a_model_is_the_threshold(tiny):
    model = tiny["model"]
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    sd, n = {}, 0
    for k, p in sorted(params.items(), key=lambda kv: -kv[1].numel()):
        if n >= 0.6 * total:
            break
        sd[k], n = p.detach(), n + p.numel()
    stats = check_coverage(model, sd)
    assert stats["matched"] == pytest.approx(n / total) and stats["matched"] >= 0.5
    wrong = {k: torch.zeros(v.numel() + 1) for k, v in sd.items()}  # right names, wrong shapes
    with pytest.raises(ValueError, match=r"have the name but another shape"):
        check_coverage(model, wrong)


def test_convert_with_config_refuses_a_checkpoint_that_does_not_fit(tiny, capsys):
    src = _save(tiny, "foreign.pth", {"classifier.weight": torch.ones(2, 2)})
    out = tiny["root"] / "foreign_converted.pth"
    assert convert.main([src, str(out), "--config", tiny["cfg_file"]]) == 1
    assert "provides 0.0% of the model's parameters" in capsys.readouterr().err
    assert not out.exists()
