"""A researcher training with the GLIPv2 / X-VLM switches (docs/glipv2_xvlm.md): wrong values of
each key are refused by name at build time (negative / NaN / inf weights turned a loss off
silently or made it inf; a temperature outside X-VLM's range was clamped silently, NaN gave NaN
losses), a linear probe refuses losses that would train nothing and trains the text-to-box
head's last layer, and a model with every head trains, saves and reloads."""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks
from detectron2.utils.events import EventStorage

from tests.helpers import make_input, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

NAN, INF = float("nan"), float("inf")
EXTRA_HEADS = ("mlm_head", "mask_head", "text_box_head", "itc_head", "itm_head")


def _cfg(**keys):
    """tiny_cfg() with dotted keys below MODEL set, e.g. GLIP__LOSSES__ITC_WEIGHT=1.0."""
    cfg = tiny_cfg()
    for path, value in keys.items():
        node = cfg.MODEL
        *parents, last = path.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return cfg


def _build(**keys):
    torch.manual_seed(0)
    return build_model(_cfg(**keys)).train()


ALL_HEADS = dict(
    GLIP__LOSSES__CONTRASTIVE_WEIGHT=0.1, GLIP__LOSSES__MLM_WEIGHT=1.0,
    GLIP__LOSSES__ITC_WEIGHT=1.0, GLIP__LOSSES__ITC_EMBED_DIM=16, GLIP__LOSSES__ITM_WEIGHT=1.0,
    GLIP__TEXT_BOX_HEAD__NAME="XVLMBoxHead", GLIP__TEXT_BOX_HEAD__HIDDEN_DIM=32,
    MASK_ON=True, ROI_MASK_HEAD__NUM_CONV=1, ROI_MASK_HEAD__CONV_DIM=16,
)


def _batch(model):
    """A referring expression (one box, with a mask), a two-box caption (masks) and a detection
    prompt without masks: every head has something to train on."""

    def caption(text, boxes, spans, seed):
        x = make_input(model, text, boxes, spans, seed=seed)
        x["phrase_spans"] = [[list(s)] for s in spans]  # what the mapper gives a caption record
        inst = x["instances"]
        masks = torch.zeros(len(inst), *inst.image_size, dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(inst.gt_boxes.tensor.long().tolist()):
            masks[k, y0:y1, x0:x1] = True
        inst.gt_masks = BitMasks(masks)
        return x

    return [
        caption("the red circle left of the blue square", [[10, 20, 70, 90]], [(4, 14)], 0),
        caption("a green triangle and a blue square", [[40, 40, 120, 150], [100, 30, 170, 120]],
                [(2, 16), (23, 34)], 1),
        make_input(model, "red circle. blue square. green triangle", [[30, 30, 90, 90]],
                   [(0, 10)], seed=2),
    ]


# ------------------------------------------------------------------ wrong values, by key
@pytest.mark.parametrize("key", ["CONTRASTIVE_WEIGHT", "MLM_WEIGHT", "ITC_WEIGHT", "ITM_WEIGHT"])
@pytest.mark.parametrize("value", [-1.0, NAN, INF])
def test_a_loss_weight_that_is_negative_or_not_finite_is_refused_by_name(key, value):
    with pytest.raises(ValueError, match=rf"MODEL\.GLIP\.LOSSES\.{key} .* not a finite number >= 0"):
        _build(**{f"GLIP__LOSSES__{key}": value})


@pytest.mark.parametrize(
    "keys, message",
    [
        (dict(MASK_ON=True, GLIP__MASK_LOSS_WEIGHT=-1.0), r"MASK_LOSS_WEIGHT -1\.0 is not a finite"),
        (dict(MASK_ON=True, GLIP__MASK_LOSS_WEIGHT=NAN), r"MASK_LOSS_WEIGHT nan is not a finite"),
        (dict(GLIP__TEXT_BOX_HEAD__L1_WEIGHT=-0.5), r"TEXT_BOX_HEAD\.L1_WEIGHT -0\.5 is not a finite"),
        (dict(GLIP__TEXT_BOX_HEAD__GIOU_WEIGHT=NAN), r"TEXT_BOX_HEAD\.GIOU_WEIGHT nan is not a finite"),
        (dict(GLIP__TEXT_BOX_HEAD__NUM_HEADS=0), r"NUM_HEADS \(0\) and HIDDEN_DIM \(32\) must be >= 1"),
        (dict(GLIP__TEXT_BOX_HEAD__HIDDEN_DIM=0), r"NUM_HEADS \(4\) and HIDDEN_DIM \(0\) must be >= 1"),
    ],
)
def test_wrong_mask_and_text_box_head_values_are_refused_by_name(keys, message):
    if any(k.startswith("GLIP__TEXT_BOX_HEAD") for k in keys):
        keys = {"GLIP__TEXT_BOX_HEAD__NAME": "XVLMBoxHead", "GLIP__TEXT_BOX_HEAD__HIDDEN_DIM": 32, **keys}
    with pytest.raises(ValueError, match=message):
        _build(**keys)


@pytest.mark.parametrize("temperature", [0.0, -0.07, NAN, 0.6])
def test_an_itc_temperature_outside_the_clamp_range_is_refused(temperature):
    """0 and negatives were clamped to 0.001 (a loss of ~70), 0.6 to 0.5, NaN gave NaN losses."""
    with pytest.raises(ValueError, match=r"ITC_TEMPERATURE .* outside \[0\.001, 0\.5\]"):
        _build(GLIP__LOSSES__ITC_WEIGHT=1.0, GLIP__LOSSES__ITC_TEMPERATURE=temperature)


def test_itc_temperature_at_the_ends_of_the_range_and_a_zero_width_space():
    for t in (0.001, 0.5):
        m = _build(GLIP__LOSSES__ITC_WEIGHT=1.0, GLIP__LOSSES__ITC_EMBED_DIM=8,
                   GLIP__LOSSES__ITC_TEMPERATURE=t)
        assert m.itc_head.temperature.item() == pytest.approx(t)
    with pytest.raises(ValueError, match=r"ITC_EMBED_DIM must be >= 1 .*got 0"):
        _build(GLIP__LOSSES__ITC_WEIGHT=1.0, GLIP__LOSSES__ITC_EMBED_DIM=0)


# ------------------------------------------------------------------ linear probe
@pytest.mark.parametrize("key", ["MLM_WEIGHT", "ITC_WEIGHT", "ITM_WEIGHT"])
def test_a_linear_probe_refuses_a_loss_that_would_train_nothing(key):
    """Linear tuning froze the MLM / ITC / ITM heads whole and nothing on their losses' path
    trains: the losses were computed and logged every step for nothing."""
    with pytest.raises(ValueError, match=rf"TUNING 'linear' .*MODEL\.GLIP\.LOSSES\.{key}.*set them to 0"):
        _build(GLIP__TUNING="linear", **{f"GLIP__LOSSES__{key}": 1.0})


def test_a_linear_probe_trains_the_text_box_heads_last_layer():
    """Frozen whole, a new text-to-box head never learned (PREDICT answered with random boxes);
    now its last layer trains, as the mask head's does, and nothing else is added."""
    def trainable(m):
        return {n for n, p in m.named_parameters() if p.requires_grad}

    m = _build(GLIP__TUNING="linear", GLIP__TEXT_BOX_HEAD__NAME="XVLMBoxHead",
               GLIP__TEXT_BOX_HEAD__HIDDEN_DIM=32)
    box = {n for n in trainable(m) if n.startswith("text_box_head.")}
    assert box == {"text_box_head.mlp.4.weight", "text_box_head.mlp.4.bias"}
    assert trainable(m) - box == trainable(_build(GLIP__TUNING="linear"))
    with EventStorage():
        losses = m(_batch(m))
    (losses["loss_text_box_l1"] + losses["loss_text_box_giou"]).backward()
    assert m.text_box_head.mlp[4].weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ every head together
@pytest.mark.heavy(6)
def test_every_head_trains_saves_and_reloads(tmp_path):
    from glip_d2.checkpoint import GLIPCheckpointer
    from tests.predictor.test_convert import to_official

    m = _build(**ALL_HEADS)
    batch = _batch(m)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    keys = {"loss_contrastive", "loss_mlm", "loss_mask", "loss_text_box_l1",
            "loss_text_box_giou", "loss_itc_image", "loss_itc_region", "loss_itm"}
    with EventStorage():
        for _ in range(2):
            losses = m(batch)
            assert keys <= set(losses) and all(torch.isfinite(v) for v in losses.values())
            opt.zero_grad()
            sum(losses.values()).backward()
            for head in EXTRA_HEADS:  # each head's own loss reaches it
                grads = [p.grad for p in getattr(m, head).parameters()]
                assert any(g is not None and g.abs().sum() > 0 for g in grads), head
            opt.step()
    assert all(losses[k].item() > 0 for k in keys - {"loss_itc_region"})
    GLIPCheckpointer(m, save_dir=str(tmp_path)).save("heads")

    # reloaded: every tensor, and the text-to-box head's answer to a caption
    again = _build(**ALL_HEADS, GLIP__TEXT_BOX_HEAD__PREDICT=True)
    ck = GLIPCheckpointer(again)
    incompatible = ck._load_model(ck._load_file(str(tmp_path / "heads.pth")))
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    m.eval().text_box_predict = True
    query = {k: v for k, v in batch[0].items() if k not in ("instances", "phrase_spans")}
    with torch.no_grad():
        want, got = m([query])[0]["instances"], again.eval()([query])[0]["instances"]
    assert len(got) == 1 and got.scores.tolist() == [1.0] and got.pred_classes.tolist() == [0]
    torch.testing.assert_close(got.pred_boxes.tensor, want.pred_boxes.tensor)
    x0, y0, x1, y1 = got.pred_boxes.tensor[0].tolist()
    assert 0 <= x0 < x1 <= 192 and 0 <= y0 < y1 <= 160

    # an official GLIP checkpoint: the five heads are reported missing and keep their init
    plain = _build()
    torch.save({"model": to_official(dict(plain.state_dict()))}, tmp_path / "official.pth")
    fresh = _build(**ALL_HEADS)
    init = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith(EXTRA_HEADS)}
    ck = GLIPCheckpointer(fresh)
    incompatible = ck._load_model(ck._load_file(str(tmp_path / "official.pth")))
    assert sorted(incompatible.missing_keys) == sorted(init)
    assert {k.split(".")[0] for k in init} == set(EXTRA_HEADS)
    assert not incompatible.unexpected_keys
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in init.items())
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in plain.state_dict().items())


@pytest.mark.parametrize("key, value", [
    ("LOSSES.MLM_WEIGHT", 1.0), ("LOSSES.ITC_WEIGHT", 0.5), ("LOSSES.ITM_WEIGHT", 1.0),
    ("TEXT_BOX_HEAD.NAME", "XVLMBoxHead"), ("TEXT_BOX_HEAD.PREDICT", True),
])
def test_the_two_stage_model_refuses_one_stage_only_heads(key, value):
    """LanguageAwareRCNN has no MLM / ITC / ITM / text-to-box head: the keys were ignored (a
    refexp evaluation with PREDICT scored the ROI detections, the losses never ran)."""
    from detectron2.modeling import build_model

    from tests.roi.roi_helpers import two_stage_cfg

    cfg = two_stage_cfg()
    section, name = key.split(".")
    cfg.MODEL.GLIP[section][name] = value
    with pytest.raises(ValueError, match=rf"MODEL\.GLIP\.{key} .*'LanguageAwareRCNN' has no such "
                                         r"head.*set them off"):
        build_model(cfg)


def test_the_two_stage_model_checks_the_loss_weights_it_reads():
    from detectron2.modeling import build_model

    from tests.roi.roi_helpers import two_stage_cfg

    cfg = two_stage_cfg()
    cfg.MODEL.GLIP.LOSSES.CONTRASTIVE_WEIGHT = float("nan")  # read by GLIP's head as the RPN
    with pytest.raises(ValueError, match=r"CONTRASTIVE_WEIGHT nan is not a finite number >= 0"):
        build_model(cfg)
