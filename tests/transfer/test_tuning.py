"""MODEL.GLIP.TUNING: which parameters train, and GLIP prompt tuning end to end."""
import pytest
import torch
from detectron2.modeling import build_model

from glip_d2.checkpoint import GLIPCheckpointer
from glip_d2.engine import build_glip_optimizer
from glip_d2.modeling.tuning import LINEAR_PREFIXES
from tests.helpers import assert_tuned_prompt_reloads, make_input, no_text_encoder, tiny_cfg


def _cfg(mode, lang_frozen=True):
    cfg = tiny_cfg()
    cfg.MODEL.DYHEAD.NUM_CONVS = 1
    cfg.MODEL.LANGUAGE_BACKBONE.FREEZE = lang_frozen
    cfg.MODEL.GLIP.TUNING = mode
    return cfg


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {m: build_model(_cfg(m, lang_frozen=False)) for m in ("full", "linear", "prompt", "language_frozen")}


def test_each_mode_trains_what_it_says(models):
    every = {n for n, _ in models["full"].named_parameters()}
    assert _trainable(models["full"]) == every
    linear = _trainable(models["linear"])
    assert linear and all(n.startswith(LINEAR_PREFIXES) for n in linear)
    assert {"head.bbox_pred.weight", "head.centerness.weight", "head.scorer.bias0",
            "head.scorer.log_scale", "head.scorer.bias_lang", "head.scorer.proj_text.weight"} <= linear
    assert _trainable(models["prompt"]) == {"prompt_tuning.offset"}
    frozen_lang = _trainable(models["language_frozen"])
    assert frozen_lang == {n for n in every if not n.startswith("language_backbone.")}
    # frozen modules stay in eval mode while training (no dropout)
    models["prompt"].train()
    assert not models["prompt"].backbone.training and not models["prompt"].head.training
    assert models["prompt"].prompt_tuning.training
    models["linear"].train()
    assert not models["linear"].backbone.training and models["linear"].head.training


def test_frozen_backbones_stay_in_eval_mode_with_full_tuning():
    """LANGUAGE_BACKBONE.FREEZE and GLIP.FREEZE_BACKBONE with TUNING "full" (the demo's set-up):
    the frozen encoders run without dropout / drop-path while the rest trains (official train())."""
    cfg = _cfg("full", lang_frozen=True)
    cfg.MODEL.GLIP.FREEZE_BACKBONE = True
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.2
    cfg.MODEL.LANGUAGE_BACKBONE.DROPOUT_WHEN_FROZEN = False  # the official behaviour
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert not model.language_backbone.training and not model.backbone.training
    assert model.head.training
    cfg.MODEL.LANGUAGE_BACKBONE.DROPOUT_WHEN_FROZEN = True  # the demo's: text dropout stays on
    assert build_model(cfg).train().language_backbone.training
    cfg.MODEL.GLIP.TUNING = "linear"  # a transfer mode: frozen modules in eval mode regardless
    assert not build_model(cfg).train().language_backbone.training
    ids = torch.tensor([[101, 2417, 4418, 102]])
    a = model.language_backbone(ids, torch.ones_like(ids))["hidden"]
    b = model.language_backbone(ids, torch.ones_like(ids))["hidden"]
    assert torch.equal(a, b)
    x = torch.randn(1, 3, 64, 64)
    assert all(torch.equal(u, v) for u, v in zip(model.backbone(x).values(), model.backbone(x).values()))


@pytest.mark.parametrize("mode", ["linear", "prompt", "language_frozen"])
def test_optimizer_sees_only_trainable_parameters(models, mode):
    cfg = _cfg(mode, lang_frozen=False)
    opt = build_glip_optimizer(cfg, models[mode])
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in models[mode].parameters() if p.requires_grad}


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="TUNING"):
        build_model(_cfg("everything"))


def _step_input(model):
    chunk = model._chunks[0]
    return make_input(model, chunk.caption, [[10, 10, 60, 70], [80, 40, 150, 120]],
                      [chunk.spans[0], chunk.spans[2]])


def test_prompt_tuning_learns_only_the_offset_and_the_saved_prompt_needs_no_text_encoder(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg("prompt")
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0
    model = build_model(cfg)
    assert model.prompt_tuning.offset.abs().sum() == 0 and not model.prompt_tuning.initialized
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_glip_optimizer(cfg, model)
    model.train()
    x = _step_input(model)
    for _ in range(2):
        losses = model([x, x])
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert "prompt_tuning.offset" in changed and model.prompt_tuning.offset.abs().sum() > 0
    assert {k for k in changed if not k.startswith("prompt_tuning.")} == set()
    assert model.prompt_tuning.initialized  # P0 stored in buffers (hidden, embedded, ids)
    with pytest.raises(ValueError, match="one fixed prompt"):
        model([x, dict(x, caption="red circle")])

    model.eval()
    image = {"image": x["image"], "height": 160, "width": 192}
    with torch.no_grad():
        expected = model([image])[0]["instances"]
    GLIPCheckpointer(model, save_dir=str(tmp_path)).save("tuned")

    reloaded, got = assert_tuned_prompt_reloads(cfg, str(tmp_path / "tuned.pth"), image, expected)
    assert torch.equal(reloaded.prompt_tuning.offset, model.prompt_tuning.offset)
    # the predictor, built from the same config and checkpoint, also runs without the text encoder
    import numpy as np

    from glip_d2.predictor import GLIPPredictor

    pcfg = cfg.clone()
    pcfg.MODEL.WEIGHTS = str(tmp_path / "tuned.pth")
    pred = GLIPPredictor(pcfg)
    pred.model.language_backbone.forward = no_text_encoder
    assert torch.equal(pred.model.prompt_tuning.offset, model.prompt_tuning.offset)
    image_bgr = x["image"].permute(1, 2, 0).numpy().astype(np.uint8)
    assert len(pred(image_bgr, confidence_threshold=0.0)["instances"]) > 0
    # the zero-shot model (offset 0) scores differently: the offset is what was learned
    zero = build_model(cfg).eval()
    GLIPCheckpointer(zero).load(str(tmp_path / "tuned.pth"))
    with torch.no_grad():
        zero.prompt_tuning.offset.zero_()
        base = zero([image])[0]["instances"]
    assert not torch.equal(base.scores[:10], got.scores[:10])


def test_a_prompt_tuned_model_warns_once_when_another_prompt_bypasses_the_tuned_one(caplog):
    torch.manual_seed(0)
    model = build_model(_cfg("prompt"))
    model.train()
    x = _step_input(model)
    model([x])  # stores the tuned prompt P0
    model.eval()
    image = {"image": x["image"], "height": 160, "width": 192}
    with caplog.at_level("WARNING", logger="glip_d2"), torch.no_grad():
        model([image])  # the tuned prompt: no warning
        assert "not the tuned one" not in caplog.text
        model.set_vocabulary(["red circle", "blue square"])
        model([image])
        model([image])
    assert caplog.text.count("is not the tuned one") == 1 and "zero-shot scores" in caplog.text


def test_prompt_tuning_of_a_model_with_the_mlm_loss_trains_the_prompt():
    """GLIPv2's MLM masks the text, which would bypass the one tuned prompt (and left no loss
    with a gradient): under prompt tuning it is off and the offset trains."""
    torch.manual_seed(0)
    cfg = _cfg("prompt")
    cfg.MODEL.GLIP.LOSSES.MLM_WEIGHT = 1.0
    model = build_model(cfg).train()
    assert model.mlm_head is not None  # kept, so GLIPv2 checkpoints still load
    x = _step_input(model)
    losses = model([x])
    assert "loss_mlm" not in losses
    sum(losses.values()).backward()
    assert model.prompt_tuning.offset.grad.abs().sum() > 0


def test_a_linear_probe_trains_the_mask_heads_last_layer():
    """With MODEL.MASK_ON, linear tuning froze the whole (new, random) mask head: its masks never
    trained. Its last layer now trains, as the two-stage model's does."""
    cfg = _cfg("linear")
    cfg.MODEL.MASK_ON = True
    torch.manual_seed(0)
    trainable = _trainable(build_model(cfg))
    mask = {n for n in trainable if n.startswith("mask_head.")}
    assert mask == {"mask_head.predictor.predictor.weight", "mask_head.predictor.predictor.bias"}
    assert trainable - mask == _trainable(build_model(_cfg("linear")))
