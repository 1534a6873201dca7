"""Library code against the hand-written code it replaced (or was measured against), issue 16.

* the token focal loss runs on ``torchvision.ops.sigmoid_focal_loss``: bit-equal loss and
  gradient to the hand-written official formula;
* the GIoU loss stays hand-written: ``torchvision.ops.generalized_box_iou_loss`` is bit-equal on
  GLIP-sized boxes but not on boxes of a few pixels (eps placement);
* the tower's BERT layer stays hand-written: HF's ``BertLayer`` (eager attention) is bit-equal
  while the +-50000 clamp is idle, but the clamp sits between the attention scores and the mask,
  where HF's layer has no hook.
"""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

from glip_d2.modeling.fusion.bert_layer import BertEncoderLayer
from glip_d2.modeling.heads import box_coder
from glip_d2.modeling.heads.losses import giou_loss, token_sigmoid_focal_loss


def _old_token_focal_loss(logits, targets, text_mask, alpha=0.25, gamma=2.0):
    """The hand-written loss token_sigmoid_focal_loss had before it used torchvision."""
    keep = (text_mask > 0)[:, None, :].expand_as(logits)
    x, t = logits[keep], targets[keep].to(logits.dtype)
    p = x.sigmoid()
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss.sum()


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 1.5)])
def test_token_focal_loss_on_torchvision_is_bit_equal_to_the_hand_written_one(alpha, gamma):
    g = torch.Generator().manual_seed(0)
    for real_tokens in (1, 17, 200, 256):
        logits = torch.randn(2, 300, 256, generator=g) * 4
        targets = torch.rand(2, 300, 256, generator=g) < 0.05
        mask = torch.zeros(2, 256)
        mask[0, :real_tokens], mask[1, : max(1, real_tokens // 2)] = 1, 1
        x_old, x_new = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        old = _old_token_focal_loss(x_old, targets, mask, alpha, gamma)
        new = token_sigmoid_focal_loss(x_new, targets, mask, alpha, gamma)
        old.backward()
        new.backward()
        assert torch.equal(old, new)
        assert torch.equal(x_old.grad, x_new.grad)


def _random_deltas(n, scale, seed):
    """Anchors of `scale` px, ground truth jittered around them, predictions around those."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 8 * scale
    anchors = torch.cat([xy, xy + scale * (0.5 + torch.rand(n, 2, generator=g))], 1)
    gt = anchors + torch.randn(n, 4, generator=g) * scale / 4
    gt[:, 2:] = torch.max(gt[:, 2:], gt[:, :2] + 1)
    target = box_coder.encode(gt, anchors)
    pred = target + torch.randn(n, 4, generator=g)
    return pred, target, anchors, torch.rand(n, generator=g)


def _torchvision_giou(pred, target, anchors, weight):
    p, t = box_coder.decode(pred, anchors), box_coder.decode(target, anchors)
    p = torch.stack([p[:, 0], p[:, 1], p[:, [0, 2]].amax(1), p[:, [1, 3]].amax(1)], 1)
    return (generalized_box_iou_loss(p, t, reduction="none", eps=1e-7) * weight).sum()


def test_giou_loss_equals_torchvision_on_glip_boxes_but_not_on_tiny_ones():
    # GLIP's anchors (64-1024 px): bit-equal, loss and gradient
    for seed in range(10):
        pred, target, anchors, weight = _random_deltas(2000, 64.0 * 2 ** (seed % 5), seed)
        p_old, p_new = pred.clone().requires_grad_(), pred.clone().requires_grad_()
        old, new = giou_loss(p_old, target, anchors, weight), _torchvision_giou(
            p_new, target, anchors, weight
        )
        old.backward()
        new.backward()
        assert torch.equal(old, new)
        assert torch.equal(p_old.grad, p_new.grad)

    # boxes of a pixel or less: the official (area_c + eps) - (union + eps) rounds differently
    # from torchvision's area_c - union; this is why giou_loss stays hand-written
    def raw_giou(a, b):
        iw = (torch.min(a[:, 2], b[:, 2]) - torch.max(a[:, 0], b[:, 0])).clamp(min=0)
        ih = (torch.min(a[:, 3], b[:, 3]) - torch.max(a[:, 1], b[:, 1])).clamp(min=0)
        inter = iw * ih
        area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
        enclose = (torch.max(a[:, 2], b[:, 2]) - torch.min(a[:, 0], b[:, 0])) * (
            torch.max(a[:, 3], b[:, 3]) - torch.min(a[:, 1], b[:, 1])
        ) + 1e-7
        union = area(a) + area(b) - inter + 1e-7
        return 1 - (inter / union - (enclose - union) / enclose)

    g = torch.Generator().manual_seed(1)
    boxes = [torch.rand(10000, 2, generator=g) for _ in range(4)]
    a = torch.cat([boxes[0], boxes[0] + boxes[1]], 1)
    b = torch.cat([boxes[2], boxes[2] + boxes[3]], 1)
    diff = (raw_giou(a, b) - generalized_box_iou_loss(a, b, eps=1e-7)).abs()
    assert 0 < diff.max() <= 3e-7 and (diff > 0).float().mean() > 0.05


def _hf_bert_layer(ours: BertEncoderLayer):
    """HF's BertLayer (eager attention) carrying `ours`' weights."""
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    config = BertConfig(
        hidden_size=ours.query.in_features,
        num_attention_heads=ours.num_heads,
        intermediate_size=ours.ffn_in.out_features,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )
    config._attn_implementation = "eager"
    hf = BertLayer(config).eval()
    parts = {
        "attention.self.query": ours.query,
        "attention.self.key": ours.key,
        "attention.self.value": ours.value,
        "attention.output.dense": ours.attn_out,
        "attention.output.LayerNorm": ours.attn_norm,
        "intermediate.dense": ours.ffn_in,
        "output.dense": ours.ffn_out,
        "output.LayerNorm": ours.ffn_norm,
    }
    hf.load_state_dict(
        {f"{p}.{k}": v for p, m in parts.items() for k, v in m.state_dict().items()}, strict=True
    )
    return hf


def test_bert_layer_is_hf_bert_layer_plus_the_clamp():
    transformers = pytest.importorskip("transformers")
    # transformers 5.x's eager attention multiplies the scores by 1/sqrt(d) where ours (and 4.x)
    # divides by sqrt(d): one rounding apart, 7e-7 at most here; 4.x is bit-equal
    atol = 0.0 if int(transformers.__version__.split(".")[0]) < 5 else 2e-6
    torch.manual_seed(0)
    ours = BertEncoderLayer(hidden_size=128, num_heads=4, intermediate_size=256).eval()
    hf = _hf_bert_layer(ours)
    mask = torch.zeros(2, 64)
    mask[0, :5], mask[1, :50] = 1, 1
    additive = (1.0 - mask[:, None, None, :]) * torch.finfo(torch.float32).min

    def both(hidden):
        with torch.no_grad():
            theirs = hf(hidden, attention_mask=additive)
            # transformers 4.x returns a tuple, 5.x the tensor
            return ours(hidden, mask), theirs[0] if isinstance(theirs, tuple) else theirs

    # scores well inside +-50000: the clamp is idle and the layers are equal
    a, b = both(torch.randn(2, 64, 128))
    torch.testing.assert_close(a, b, rtol=0.0, atol=atol)
    # scores beyond 50000 (fp16-scale activations): the official clamp changes the result, and
    # HF's layer offers no place for it between the scores and the mask
    a, b = both(torch.randn(2, 64, 128) * 1000)
    assert not torch.allclose(a, b, atol=1e-3)
    ours.clamp_min = ours.clamp_max = False
    a, b = both(torch.randn(2, 64, 128) * 1000)
    assert torch.equal(a, b)
