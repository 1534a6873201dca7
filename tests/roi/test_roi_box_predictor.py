"""LanguageAwareBoxPredictor's scores and losses against computations written out by hand."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances

from glip_d2.modeling.roi_heads import (
    BACKGROUND_INDEX,
    EncodedPrompt,
    LanguageAwareBoxPredictor,
    RegionTextInputs,
)

C, D, E, T = 16, 8, 6, 7


def _predictor(cls_loss):
    torch.manual_seed(0)
    p = LanguageAwareBoxPredictor(
        ShapeSpec(channels=C),
        language_dim=D,
        box2box_transform=Box2BoxTransform((10, 10, 5, 5)),
        embed_dim=E,
        cls_loss=cls_loss,
        log_scale=0.3,
    )
    with torch.no_grad():  # non-trivial values for every parameter
        for param in p.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return p


def _regions(p, x):
    """The region embedding, by hand: LayerNorm(W x + b)."""
    y = x @ p.region_proj.weight.T + p.region_proj.bias
    return F.layer_norm(y, (E,), p.region_norm.weight, p.region_norm.bias, p.region_norm.eps)


def _logits(p, regions, feats):
    """Official GLIP dot product: <o, W t/2 + b> / exp(log_scale) + <t, b_lang> + b0, t = t/|t|."""
    t = feats / feats.norm(dim=-1, keepdim=True)
    proj = (t / 2) @ p.scorer.proj_text.weight.T + p.scorer.proj_text.bias
    return regions @ proj.T / p.scorer.log_scale.exp() + t @ p.scorer.bias_lang + p.scorer.bias0


def _proposals(n, gt_index=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    inst = Instances((100, 100))
    inst.proposal_boxes = Boxes(torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 40], 1))
    if gt_index is not None:
        inst.gt_classes = torch.tensor(gt_index)
        inst.gt_boxes = Boxes(inst.proposal_boxes.tensor + torch.randn(n, 4, generator=g) * 3)
    return inst


def _prompt(seed, label_map=None, label_ids=None):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([1, 1, 1, 1, 1, 0, 0])
    return EncodedPrompt(
        tokens=torch.randn(T, D, generator=g),
        mask=mask,
        input_ids=torch.tensor([101, 5, 6, 1012, 7, 0, 0]),
        label_map=label_map,
        label_ids=label_ids,
    )


@pytest.mark.parametrize("cls_loss", ["focal", "softmax"])
def test_roi_label_scores_match_an_independent_computation(cls_loss):
    p = _predictor(cls_loss).eval()
    x = torch.randn(5, C)
    label_map = torch.zeros(2, T, dtype=torch.bool)
    label_map[0, 1:3] = True  # label 2: tokens 1, 2
    label_map[1, 4] = True  # label 0: token 4
    prompt = _prompt(1, label_map, torch.tensor([2, 0]))
    text = RegionTextInputs(prompts=[[prompt]], num_labels=[3])
    with torch.no_grad():
        probs = p.predict_probs(p(x), [_proposals(5)], text)[0]
        regions = _regions(p, x)
        expected = torch.zeros(5, 4)
        if cls_loss == "focal":
            s = _logits(p, regions, prompt.tokens).sigmoid()
            expected[:, 2] = s[:, 1:3].mean(1)
            expected[:, 0] = s[:, 4]
            expected[:, 3] = 1 - expected[:, :3].max(1).values
        else:
            labels = torch.stack([prompt.tokens[1:3].mean(0), prompt.tokens[4], p.background])
            sm = _logits(p, regions, labels).softmax(-1)
            expected[:, 2], expected[:, 0], expected[:, 3] = sm[:, 0], sm[:, 1], sm[:, 2]
    assert probs.shape == (5, 4)
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls_loss", ["focal", "bce", "softmax"])
def test_roi_losses_match_an_independent_computation(cls_loss):
    p = _predictor(cls_loss)
    bg = BACKGROUND_INDEX
    props = [_proposals(3, [0, bg, 1], seed=1), _proposals(2, [bg, 0], seed=2)]
    prompts = [[_prompt(3)], [_prompt(4)]]
    pmaps = [torch.zeros(2, 256, dtype=torch.bool), torch.zeros(1, 256, dtype=torch.bool)]
    pmaps[0][0, 1:3] = True  # image 0, GT 0: tokens (5, 6)
    pmaps[0][1, 4] = True  # image 0, GT 1: token (7,)
    pmaps[1][0, 1:3] = True  # image 1, GT 0: tokens (5, 6), the same phrase as image 0's GT 0
    text = RegionTextInputs(prompts=prompts, gt_positive_maps=pmaps)
    x = torch.randn(5, C)
    losses = p.losses(p(x), props, text)

    with torch.no_grad():
        regions = _regions(p, x)
        r0, r1 = regions[:3], regions[3:]
        if cls_loss == "softmax":
            t0, t1 = prompts[0][0].tokens, prompts[1][0].tokens
            phrase_a = (t0[1:3].mean(0) + t1[1:3].mean(0)) / 2  # two occurrences
            phrase_b = t0[4]
            labels = torch.stack([phrase_a, phrase_b, p.background])
            logits = _logits(p, regions, labels)
            expected_cls = F.cross_entropy(logits, torch.tensor([0, 2, 1, 2, 0]))
        else:
            logits = [_logits(p, r0, prompts[0][0].tokens), _logits(p, r1, prompts[1][0].tokens)]
            targets = [torch.zeros(3, T), torch.zeros(2, T)]
            targets[0][0, 1:3] = 1
            targets[0][2, 4] = 1
            targets[1][1, 1:3] = 1
            z, y = torch.cat(logits)[:, :5], torch.cat(targets)[:, :5]  # the 5 real tokens
            ce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
            if cls_loss == "focal":
                pt = torch.where(y > 0, z.sigmoid(), 1 - z.sigmoid())
                alpha = torch.where(y > 0, 0.25, 0.75)
                expected_cls = (alpha * (1 - pt) ** 2 * ce).sum() / 3  # 3 foreground regions
            else:
                expected_cls = ce.sum() / 5  # per region
        fg = torch.tensor([True, False, True, False, True])
        boxes = torch.cat([q.proposal_boxes.tensor for q in props])
        gt = torch.cat([q.gt_boxes.tensor for q in props])
        deltas = x @ p.bbox_pred.weight.T + p.bbox_pred.bias
        target = p.box2box_transform.get_deltas(boxes[fg], gt[fg])
        expected_box = (deltas[fg] - target).abs().sum() / 5  # smooth L1 with beta 0 = L1
    torch.testing.assert_close(losses["loss_cls"], expected_cls, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss_box_reg"], expected_box, rtol=1e-5, atol=1e-6)
    sum(losses.values()).backward()
    assert p.scorer.log_scale.grad is not None


def test_roi_batch_phrases_share_one_entry_per_token_sequence():
    p = _predictor("softmax")
    prompts = [[_prompt(3)], [_prompt(4)]]
    pmaps = [torch.zeros(2, 256, dtype=torch.bool), torch.zeros(1, 256, dtype=torch.bool)]
    pmaps[0][0, 4] = True
    pmaps[0][1, 1:3] = True
    pmaps[1][0, 4] = True
    emb, gt_phrase = p.batch_phrases(RegionTextInputs(prompts=prompts, gt_positive_maps=pmaps))
    assert emb.shape == (2, D)
    assert gt_phrase[0].tolist() == [0, 1] and gt_phrase[1].tolist() == [0]


def test_roi_unknown_loss_is_a_clear_error():
    with pytest.raises(ValueError, match="CLS_LOSS"):
        LanguageAwareBoxPredictor(
            ShapeSpec(channels=C),
            language_dim=D,
            box2box_transform=Box2BoxTransform((1, 1, 1, 1)),
            cls_loss="hinge",
        )
