"""Mixed precision (SOLVER.AMP.ENABLED, MODEL.GLIP.INFERENCE_DTYPE) of the fusion tower and head.

float16 tops out at 65504: a padding mask of "the dtype's lowest value" added to logits that the
fp16 clamps keep in +-50000 leaves a padding logit as high as 50000 - 65504 = -15504, above real
tokens whose logits sit near -50000. Float16 runs here as CPU autocast (the matmuls in float16).
"""
import math

import torch
from torch import nn

from glip_d2.modeling.fusion.bert_layer import BertEncoderLayer
from glip_d2.modeling.fusion.bi_attention import BiMultiHeadAttention


def _identity(lin: nn.Linear, weight=None):
    with torch.no_grad():
        lin.weight.copy_(torch.eye(lin.weight.shape[0]) if weight is None else weight)
        lin.bias.zero_()


def _fp16_and_fp32(module, *args):
    with torch.no_grad():
        ref = module(*args)
        with torch.autocast("cpu", dtype=torch.float16):
            half = module(*args)
    return ref, half


def test_xmha_padding_gets_no_attention_under_float16_at_clamp_scale_logits():
    """Real tokens at logit -40000, a padding token at +40000 (fp16-scale activations, where
    the official clamps act): padding must still get probability 0, as in float32 and in the
    official model (whose -9e15 becomes -inf in float16)."""
    attn = BiMultiHeadAttention(2, 2, 2, 1, dropout=0.0).eval()
    for lin in (attn.v_proj, attn.l_proj, attn.values_v_proj, attn.values_l_proj,
                attn.out_v_proj, attn.out_l_proj):
        _identity(lin)
    b = 40000 / 200 * math.sqrt(2)  # logit = 200 * b * 2**-0.5 = 40000
    v = torch.tensor([[[200.0, 0.0]]])
    l = torch.tensor([[[-b, 0.0], [-b, 1.0], [b, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    (ref_v, _), (half_v, _) = _fp16_and_fp32(attn, v, l, mask)
    assert half_v.dtype == torch.float16
    # the values of the real tokens only ([-b, 0] and [-b, 1], equal logits): [-b, 0.5]
    torch.testing.assert_close(ref_v, torch.tensor([[[-b, 0.5]]]))
    torch.testing.assert_close(half_v.float(), ref_v, rtol=1e-3, atol=0.0)


def test_bert_layer_padding_gets_no_attention_under_float16_at_clamp_scale_scores():
    layer = BertEncoderLayer(2, 1, 4, dropout=0.0).eval()
    _identity(layer.query)
    _identity(layer.key, torch.tensor([[-1.0, 1.0], [0.0, 0.0]]))  # k = [h1 - h0, 0]
    _identity(layer.value)
    _identity(layer.attn_out)
    s = math.sqrt(40000 * math.sqrt(2))  # score of token 0 = -+s^2 / sqrt(2) = -+40000
    hidden = torch.tensor([[[s, 0.0], [0.0, s]]])
    mask = torch.tensor([[1, 0]])
    ref, half = _fp16_and_fp32(layer, hidden, mask)
    assert half.dtype == torch.float32  # the closing LayerNorm runs in float32
    torch.testing.assert_close(half[0, 0], ref[0, 0], rtol=0, atol=2e-2)


def test_torchvision_deform_conv_samples_float16_input_in_float32_like_gather():
    """Without deep fusion, CPU float16 inference (MODEL.GLIP.INFERENCE_DTYPE float16) hands the
    DyConv float16 FPN levels. The gather path (CPU training) and torchvision's CUDA autocast
    wrapper sample in float32; torchvision's CPU kernel ran in float16 (sample coordinates off by
    up to 1/8 pixel), so training and inference of one model sampled different pixels."""
    from glip_d2.modeling.fusion.deform import ModulatedDeformConv3x3

    g = torch.Generator().manual_seed(0)
    conv = ModulatedDeformConv3x3(8, 8, impl="torchvision")
    x = torch.randn(1, 8, 40, 60, generator=g).half()
    offset = (3 * torch.randn(1, 18, 40, 60, generator=g)).half()
    mask = torch.rand(1, 9, 40, 60, generator=g).half()
    with torch.no_grad():
        exact = conv(x.float(), offset.float(), mask.float())  # the same float16 inputs
        out = conv(x, offset, mask)
        with torch.autocast("cpu", dtype=torch.float16):
            gather = ModulatedDeformConv3x3(8, 8, impl="gather")
            gather.load_state_dict(conv.state_dict())
            by_gather = gather(x, offset, mask)
    assert out.dtype == torch.float16
    # the rounding of the float16 output only
    torch.testing.assert_close(out.float(), exact, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(out.float(), by_gather.float(), rtol=5e-3, atol=5e-3)
