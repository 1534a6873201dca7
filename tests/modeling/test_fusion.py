import torch
from torchvision.ops import deform_conv2d

from glip_d2.modeling.fusion import DyConv, VLDyHeadTower, offsets_for_output
from glip_d2.modeling.fusion.bi_attention import BiMultiHeadAttention


def _tower(seed=0):
    torch.manual_seed(seed)
    return VLDyHeadTower(channels=32, language_dim=64, num_blocks=2, embed_dim=64, num_heads=4,
                         dropout=0.0, bert_heads=2, bert_intermediate=128, gn_groups=8).eval()


def _visual(seed=1, b=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 32, h, w, generator=g) for h, w in ((16, 20), (8, 10), (4, 5), (2, 3), (1, 2))]


def test_padding_tokens_never_influence_outputs():
    tower = _tower()
    vis = _visual()
    lang = torch.randn(1, 10, 64)
    mask = torch.tensor([[1] * 6 + [0] * 4])
    lang2 = lang.clone()
    lang2[:, 6:] = 100 * torch.randn(1, 4, 64)  # change only the padding
    with torch.no_grad():
        v1, l1 = tower(vis, lang, mask)
        v2, l2 = tower(vis, lang2, mask)
        v3, l3 = tower(vis, lang[:, :6], mask[:, :6])  # no padding at all
    for a, b, c in zip(v1, v2, v3):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        torch.testing.assert_close(a, c, rtol=0, atol=1e-5)
    torch.testing.assert_close(l1[:, :6], l2[:, :6], rtol=0, atol=1e-5)
    torch.testing.assert_close(l1[:, :6], l3, rtol=0, atol=1e-5)


def test_vision_to_language_attention_ignores_padding_exactly():
    attn = BiMultiHeadAttention(8, 8, 8, 2, dropout=0.0).eval()
    v, l = torch.randn(1, 5, 8), torch.randn(1, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0]])
    dv, _ = attn(v, l, mask)
    dv_short, _ = attn(v, l[:, :2], mask[:, :2])
    torch.testing.assert_close(dv, dv_short, rtol=0, atol=1e-6)


def test_layer_scale_initialised_to_one_over_depth():
    tower = _tower()
    assert torch.allclose(tower.blocks[0].fuse.gamma_v, torch.full((32,), 0.5))
    assert torch.allclose(tower.blocks[1].fuse.gamma_l, torch.full((64,), 0.5))


def test_offset_raw_prefix_reads_memory_like_the_cuda_kernel():
    # 2 images, offsets on a 3x4 grid used for a 2x2 output: the kernel reads the first
    # 18*2*2 values of each image's (18, 3, 4) map, in (C, H, W) order.
    om = torch.arange(2 * 27 * 12, dtype=torch.float32).view(2, 27, 3, 4)
    offset, mask = om[:, :18], om[:, 18:]
    off, msk = offsets_for_output(offset, mask, (2, 2), raw_prefix=True)
    assert off.shape == (2, 18, 2, 2) and msk.shape == (2, 9, 2, 2)
    # dy of tap k at (h, w) = flat index ((2k)*Ho + h)*Wo + w of image b's raw storage
    for b in range(2):
        base = b * 27 * 12
        for k in range(9):
            for h in range(2):
                for w in range(2):
                    assert off[b, 2 * k, h, w] == base + ((2 * k) * 2 + h) * 2 + w
                    assert off[b, 2 * k + 1, h, w] == base + ((2 * k + 1) * 2 + h) * 2 + w
                    assert msk[b, k, h, w] == base + 18 * 12 + (k * 2 + h) * 2 + w
    same, _ = offsets_for_output(offset, mask, (3, 4))
    assert same is offset


def test_deform_offsets_are_dy_dx_per_tap():
    # A unit dx offset on every tap of a centre-only kernel shifts the image left by one pixel.
    x = torch.arange(25, dtype=torch.float32).view(1, 1, 5, 5)
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, 1, 1] = 1
    off = torch.zeros(1, 18, 5, 5)
    off[:, 1::2] = 1.0  # dx
    out = deform_conv2d(x, off, w, padding=1, mask=torch.ones(1, 9, 5, 5))
    assert torch.equal(out[0, 0, :, :4], x[0, 0, :, 1:])
    assert torch.equal(out[0, 0, :, 4], torch.zeros(5))


def test_dyconv_shapes_and_levels_interact():
    torch.manual_seed(0)
    dy = DyConv(32, gn_groups=8).eval()
    vis = _visual()
    out = dy(vis)
    assert [o.shape for o in out] == [v.shape for v in vis]
    vis2 = [v.clone() for v in vis]
    vis2[1] += 1.0  # changing P4 changes P3 and P5 (neighbour levels) but not P7
    out2 = dy(vis2)
    assert not torch.allclose(out[0], out2[0]) and not torch.allclose(out[2], out2[2])
    torch.testing.assert_close(out[4], out2[4])
