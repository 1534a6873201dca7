"""MODEL.GLIP.TUNING in the two-stage model (LanguageAwareRCNN), and a prompt-tuned checkpoint
loaded into a model without a place for its prompt."""

import logging

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import glip_d2.modeling.meta_arch.language_rcnn  # noqa: F401  (registers LanguageAwareRCNN)
from glip_d2.checkpoint import GLIPCheckpointer
from glip_d2.engine import build_glip_optimizer
from glip_d2.modeling.tuning import TWO_STAGE_LINEAR_PREFIXES, apply_tuning
from tests.helpers import assert_tuned_prompt_reloads
from tests.roi.roi_helpers import make_input, two_stage_cfg

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


def _cfg(mode, fusion=False):
    cfg = two_stage_cfg(fusion=fusion)
    cfg.MODEL.LANGUAGE_BACKBONE.FREEZE = False
    cfg.MODEL.GLIP.TUNING = mode
    return cfg


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _fixed_prompt_input(model, seed=0):
    """A training input whose caption is the vocabulary's one prompt (as the grounding mapper
    writes it under prompt tuning: all classes, in label order)."""
    chunk = model._chunks[0]
    return make_input(model, chunk.caption, [[10, 20, 70, 90], [100, 30, 170, 120]],
                      [chunk.spans[0], chunk.spans[1]], seed=seed)


@pytest.mark.parametrize("mode", ["full", "linear", "prompt", "language_frozen"])
def test_each_tuning_mode_trains_what_it_says_in_the_two_stage_model(mode):
    torch.manual_seed(0)
    model = build_model(_cfg(mode))
    every = {n for n, _ in model.named_parameters()}
    trainable = _trainable(model)
    if mode == "full":
        assert trainable == every and model.prompt_tuning is None
    elif mode == "linear":
        assert trainable == {n for n in every if n.startswith("roi_heads.box_predictor.")}
        assert {"roi_heads.box_predictor.bbox_pred.weight",
                "roi_heads.box_predictor.region_proj.weight"} <= trainable
    elif mode == "prompt":
        assert trainable == {"prompt_tuning.offset"}
    else:
        assert trainable == {n for n in every if not n.startswith("language_backbone.")}
    # the optimizer gets exactly the trainable parameters
    opt = build_glip_optimizer(_cfg(mode), model)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for p in model.parameters() if p.requires_grad
    }
    # frozen feature extractors stay in eval mode while the rest trains (no dropout); the RPN
    # and ROI heads stay in train mode (Detectron2 switches their losses on it)
    model.train()
    if mode in ("linear", "prompt"):
        assert not model.backbone.training and not model.language_backbone.training
        assert model.proposal_generator.training and model.roi_heads.training
    if mode == "full":
        assert model.backbone.training and model.language_backbone.training


def test_linear_probe_needs_parameters_under_its_prefixes():
    with pytest.raises(ValueError, match="has none; nothing would train"):
        apply_tuning(torch.nn.Linear(2, 2), "linear", TWO_STAGE_LINEAR_PREFIXES)


@pytest.mark.parametrize("fusion", [False, True], ids=["plain", "deep_fusion"])
def test_two_stage_prompt_tuning_learns_the_offset_and_evaluates_without_the_text_encoder(
    tmp_path, fusion
):
    torch.manual_seed(0)
    cfg = _cfg("prompt", fusion=fusion)
    cfg.SOLVER.BASE_LR = 0.05  # the official prompt-tuning LR (configs/benchmarks)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_glip_optimizer(cfg, model)
    model.train()
    inputs = [_fixed_prompt_input(model, 0), _fixed_prompt_input(model, 1)]
    with EventStorage():
        for _ in range(2):
            losses = model(inputs)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
        with pytest.raises(ValueError, match="one fixed prompt"):
            model([inputs[0], dict(inputs[1], caption="red circle")])
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert "prompt_tuning.offset" in changed and model.prompt_tuning.initialized
    assert {k for k in changed if not k.startswith("prompt_tuning.")} == set()

    model.eval()
    image = {"image": inputs[0]["image"], "height": 160, "width": 192}
    with torch.no_grad():
        expected = model([image])[0]["instances"]
    GLIPCheckpointer(model, save_dir=str(tmp_path)).save("tuned")
    reloaded, got = assert_tuned_prompt_reloads(cfg, str(tmp_path / "tuned.pth"), image, expected)
    # the learned offset is what changes the scores
    with torch.no_grad():
        reloaded.prompt_tuning.offset.zero_()
        reloaded.clear_text_cache()  # eval caches a prompt's features
        zero_shot = reloaded([image])[0]["instances"]
    assert not torch.allclose(zero_shot.scores[:5], got.scores[:5])


def test_a_prompt_tuned_checkpoint_needs_a_prompt_tuning_model(tmp_path, caplog):
    torch.manual_seed(0)
    tuned = build_model(_cfg("prompt"))
    tuned.train()
    with EventStorage():
        tuned([_fixed_prompt_input(tuned)])  # stores the prompt P0
    GLIPCheckpointer(tuned, save_dir=str(tmp_path)).save("tuned")
    path = str(tmp_path / "tuned.pth")

    plain = build_model(_cfg("full")).eval()
    with pytest.raises(ValueError, match="carries a tuned prompt.*MODEL.GLIP.TUNING prompt"):
        GLIPCheckpointer(plain).load(path)
    # as a training initialisation the prompt is dropped, with a warning
    with caplog.at_level(logging.WARNING, logger="glip_d2"):
        GLIPCheckpointer(plain, partial_init_ok=True).load(path)
    assert "the learned prompt is dropped" in caplog.text
    # a prompt-tuning model built but never trained has no prompt to lose: loads anywhere
    GLIPCheckpointer(build_model(_cfg("prompt")), save_dir=str(tmp_path)).save("untrained")
    GLIPCheckpointer(build_model(_cfg("full")).eval()).load(str(tmp_path / "untrained.pth"))


def test_linear_probe_of_a_mask_rcnn_trains_the_mask_predictor_too():
    cfg = _cfg("linear")
    cfg.MODEL.MASK_ON = True
    trainable = _trainable(build_model(cfg))
    assert {"roi_heads.mask_head.predictor.weight", "roi_heads.mask_head.predictor.bias"} <= trainable
    assert all(n.startswith(TWO_STAGE_LINEAR_PREFIXES) for n in trainable)


def test_freeze_backbone_freezes_the_two_stage_backbone_and_keeps_it_in_eval_mode():
    """MODEL.GLIP.FREEZE_BACKBONE did nothing in the two-stage model (its backbone trained)."""
    cfg = _cfg("full")
    cfg.MODEL.GLIP.FREEZE_BACKBONE = True
    model = build_model(cfg).train()
    trainable = _trainable(model)
    assert trainable and not any(n.startswith("backbone.") for n in trainable)
    assert {n for n, _ in model.named_parameters() if not n.startswith("backbone.")} == trainable
    assert not model.backbone.training
    assert model.proposal_generator.training and model.roi_heads.training


@pytest.mark.parametrize("mode", ["prompt", "linear"])
def test_batch_norms_of_frozen_heads_keep_their_statistics(mode):
    """The frozen RPN / ROI heads stay in train mode (Detectron2 switches sampling and losses on
    it), but a BatchNorm in them updated its running statistics under prompt or linear tuning,
    so weights "frozen" by the mode still changed. Their BatchNorms are now in eval mode."""
    torch.manual_seed(0)
    model = build_model(_with_bn(_cfg(mode))).train()
    norm = model.roi_heads.box_head.conv1.norm
    assert model.roi_heads.training and model.proposal_generator.training
    assert not norm.training
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    with EventStorage():
        model([_fixed_prompt_input(model, 0), _fixed_prompt_input(model, 1)])
    for k, v in norm.state_dict().items():
        assert torch.equal(v, before[k]), k
    # full training still updates them
    full = build_model(_with_bn(_cfg("full"))).train()
    assert full.roi_heads.box_head.conv1.norm.training


def _with_bn(cfg):
    cfg.MODEL.ROI_BOX_HEAD.NUM_CONV, cfg.MODEL.ROI_BOX_HEAD.CONV_DIM = 1, 16
    cfg.MODEL.ROI_BOX_HEAD.NORM = "BN"
    return cfg
