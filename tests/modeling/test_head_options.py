"""The one-stage learning options (docs/one_stage_demo.md), each off by default, against
independent computations; and the official no-object token quirk as a switch."""
import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from glip_d2.modeling.fusion.dyconv import DyConv
from glip_d2.modeling.heads.losses import token_softmax_loss
from glip_d2.modeling.heads.region_word import RegionWordScorer
from tests.helpers import make_input, tiny_cfg


def test_token_softmax_loss_against_a_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 5, generator=g)
    targets = torch.zeros(2, 6, 5, dtype=torch.bool)
    targets[0, 1, [1, 2]] = True  # a two-token name
    targets[1, 4, 3] = True
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    expected = 0.0
    for b, a in ((0, 1), (1, 4)):
        real = mask[b].bool()
        log_p = torch.log_softmax(logits[b, a, real], dim=0)
        t = targets[b, a, real].float()
        expected += -(t * log_p).sum() / t.sum()
    torch.testing.assert_close(token_softmax_loss(logits, targets, mask), expected)
    # a score shared by every token cancels
    torch.testing.assert_close(token_softmax_loss(logits + 7.0, targets, mask), expected)
    assert token_softmax_loss(logits, torch.zeros_like(targets), mask) == 0


def test_centred_tokens_have_zero_mean_over_real_tokens_and_same_default():
    torch.manual_seed(0)
    plain = RegionWordScorer(8, 12)
    centred = RegionWordScorer(8, 12, center_tokens=True)
    centred.load_state_dict(plain.state_dict())  # the option adds no parameter
    tokens = torch.randn(2, 5, 12)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    p0, b0 = plain.encode_tokens(tokens, mask)
    p1, b1 = centred.encode_tokens(tokens, mask)
    torch.testing.assert_close(b0, b1)
    for i in range(2):
        real = mask[i].bool()
        torch.testing.assert_close(p1[i, real], p0[i, real] - p0[i, real].mean(0))
        assert p1[i, real].mean(0).abs().max() < 1e-6
    # a region feature along the shared direction no longer moves the scores
    regions = torch.randn(2, 3, 8)
    before = centred.score(regions, p1, b1)
    assert not torch.allclose(plain.score(regions, p0, b0), before)


def test_residual_dyconv_adds_its_input():
    torch.manual_seed(0)
    block = DyConv(16, use_deform=False, gn_groups=4)
    res = DyConv(16, use_deform=False, gn_groups=4, residual=True)
    res.load_state_dict(block.state_dict())
    feats = [torch.randn(1, 16, s, s) for s in (8, 4, 2)]
    for x, y, z in zip(feats, block(feats), res(feats)):
        torch.testing.assert_close(z, x + y)


def test_plain_and_deformable_tower_conv_init():
    plain = DyConv(64, use_deform=False, conv_init_std=0.01)
    assert abs(plain.convs[1].conv.weight.std().item() - 0.01) < 1e-3
    wide = DyConv(64, use_deform=False, conv_init_std=0.05)
    assert abs(wide.convs[1].conv.weight.std().item() - 0.05) < 5e-3
    deform = DyConv(64, use_deform=True)  # official U(+-1/sqrt(fan_in)) kept
    bound = 1 / (64 * 9) ** 0.5
    w = deform.convs[1].conv.weight
    assert w.abs().max() <= bound and w.std().item() > 0.5 * bound / 3 ** 0.5


def _losses(no_object: bool, caption: str):
    cfg = tiny_cfg()
    cfg.MODEL.ATSS.NO_OBJECT_TOKEN_TARGET = no_object
    cfg.MODEL.LANGUAGE_BACKBONE.PAD_MAX = True
    torch.manual_seed(0)
    model = build_model(cfg).train()
    x = make_input(model, caption, [[10, 20, 90, 100]], [(0, 3)])
    return model([x])["loss_cls"].item()


def test_no_object_token_switch():
    short = "red circle"
    assert _losses(False, short) == _losses(True, short)  # token 255 is padding: no effect
    full = "red " * 300  # fills all 256 tokens: the official quirk trains token 255 as "no object"
    assert _losses(True, full) > _losses(False, full) + 1e-3


def test_region_context_convs_start_as_identity_and_read_the_neighbourhood():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    plain = build_model(cfg).train()
    cfg.MODEL.ATSS.REGION_CONTEXT_CONVS = 1
    torch.manual_seed(0)
    ctx = build_model(cfg).train()
    missing, unexpected = ctx.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["head.region_context.0.bias", "head.region_context.0.weight"]
    assert not unexpected
    torch.manual_seed(1)
    x = make_input(plain, "red circle", [[10, 20, 90, 100]], [(0, 3)])
    torch.manual_seed(2)
    a = plain([x])
    torch.manual_seed(2)
    b = ctx([x])
    for k in a:  # zero-initialised: the same model at the start
        torch.testing.assert_close(a[k], b[k])
    sum(b.values()).backward()
    conv = ctx.head.region_context[0]
    assert conv.weight.grad.abs().sum() > 0  # it learns from the naming loss
    # once it has weights, it changes the token scores and nothing the box branch reads
    with torch.no_grad():
        conv.weight.normal_(std=0.1)
        ctx.eval(), plain.eval()
        c, d = conv.in_channels, cfg.MODEL.LANGUAGE_BACKBONE.LANG_DIM
        feats = [torch.randn(1, c, s, s) for s in (16, 8, 4, 2, 1)]
        hidden = torch.randn(1, 6, d)
        lang = {"hidden": hidden, "embedded": hidden, "masks": torch.ones(1, 6, dtype=torch.long)}
        torch.manual_seed(3)
        p_out = plain.head(feats, lang)
        torch.manual_seed(3)
        c_out = ctx.head(feats, lang)
    for k in ("box_regression", "centerness"):
        for u, w in zip(p_out[k], c_out[k]):
            torch.testing.assert_close(u, w)
    assert all(not torch.allclose(u, w) for u, w in zip(p_out["token_logits"], c_out["token_logits"]))


def test_phrase_focal_loss_against_a_loop():
    from glip_d2.modeling.heads.losses import phrase_sigmoid_focal_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, generator=g)
    # prompt 0: "red circle" = tokens 1, 2; "red square" = tokens 1, 3 (a shared colour token)
    maps = [torch.zeros(3, 8, dtype=torch.bool), torch.zeros(1, 8, dtype=torch.bool)]
    maps[0][0, [1, 2]] = True
    maps[0][1, [1, 3]] = True  # row 2 names no token: ignored
    maps[1][0, 4] = True
    targets = torch.zeros(2, 4, 6, dtype=torch.bool)
    targets[0, 0, [1, 2]] = True  # a red circle at anchor 0
    targets[1, 2, 4] = True
    alpha, gamma = 0.25, 2.0
    expected = 0.0
    for b, phrases in ((0, [[1, 2], [1, 3]]), (1, [[4]])):
        for a in range(4):
            for tok in phrases:
                x = logits[b, a, tok].mean()
                y = float(all(targets[b, a, t] for t in tok))
                p = torch.sigmoid(x)
                p_t = p if y else 1 - p
                alpha_t = alpha if y else 1 - alpha
                expected = expected - alpha_t * (1 - p_t) ** gamma * torch.log(p_t)
    torch.testing.assert_close(phrase_sigmoid_focal_loss(logits, targets, maps, alpha, gamma), expected)
    # the shared token: the red circle's loss pushes "red square" down as a whole, while the
    # token-level loss would pull token 1 up (it is a target token of the red circle)
    x = logits.clone().requires_grad_()
    phrase_sigmoid_focal_loss(x, targets, maps).backward()
    assert x.grad[0, 0, 3] > 0 and x.grad[0, 0, 2] < 0


def test_mean_logit_score_aggregation():
    from glip_d2.modeling.heads import label_scores_from_logits

    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    pmap = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    expected = torch.tensor([[(-1.0 + 0.5) / 2, 2.0, (0.5 - 3.0) / 2]]).sigmoid()
    torch.testing.assert_close(label_scores_from_logits(logits, pmap, "MEAN_LOGIT"), expected)
    mean = label_scores_from_logits(logits, pmap, "MEAN")  # the official mean of probabilities
    torch.testing.assert_close(mean[0, 0], logits[0, 1:3].sigmoid().mean())


def test_min_and_geometric_mean_score_aggregation():
    """A name scores as its least-present word (MIN) or the geometric mean of its words: on a
    red star, "red square" (red 0.9, square 0.1) scores 0.5 by the official MEAN, 0.1 / 0.3 here,
    while the true "red star" keeps 0.9."""
    from glip_d2.modeling.heads import label_scores

    probs = torch.tensor([[0.9, 0.1, 0.9, 0.0]])  # red, square, star, (unused)
    pmap = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(label_scores(probs, pmap, "MEAN")[0, :2], torch.tensor([0.5, 0.9]))
    torch.testing.assert_close(label_scores(probs, pmap, "MIN"), torch.tensor([[0.1, 0.9, 0.0]]))
    torch.testing.assert_close(label_scores(probs, pmap, "GEO_MEAN"), torch.tensor([[0.3, 0.9, 0.0]]))
    # one-token names: every aggregation is that token's probability
    one = torch.eye(4, dtype=torch.bool)[:3]
    for mode in ("MEAN", "MAX", "MIN", "GEO_MEAN"):
        torch.testing.assert_close(label_scores(probs, one, mode), probs[:, :3])
    with pytest.raises(ValueError, match="GEO_MEAN"):
        label_scores(probs, pmap, "MEDIAN")


def test_phrase_loss_in_the_model_uses_the_mapper_phrase_map_or_the_boxes_phrases():
    cfg = tiny_cfg()
    cfg.MODEL.ATSS.PHRASE_LOSS_WEIGHT = 2.0
    torch.manual_seed(0)
    model = build_model(cfg).train()
    x = make_input(model, "red circle. red square", [[10, 20, 90, 100]], [(0, 10)])
    torch.manual_seed(1)
    own = model([x])["loss_phrase"]  # no phrase_map: the box's phrase only
    pm = torch.zeros(2, x["instances"].gt_positive_map.shape[1], dtype=torch.bool)
    pm[0] = x["instances"].gt_positive_map[0]
    pm[1, [4, 5]] = True  # "red square": [CLS] red circle . red square [SEP]
    torch.manual_seed(1)
    both = model([dict(x, phrase_map=pm)])["loss_phrase"]
    assert torch.isfinite(own) and both > own  # the negative phrase adds its loss
