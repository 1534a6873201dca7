"""Review round: fusion, backbones, language backbones and evaluators on non-default options
(half precision, memory layouts, non-BERT text checkpoints, ...)."""

import pytest
import torch
from torchvision.ops import deform_conv2d

from glip_d2.modeling.fusion import VLDyHeadTower
from glip_d2.modeling.fusion.deform import ModulatedDeformConv3x3, deform_conv3x3_by_gather
from glip_d2.modeling.language.hf_bert import HFBertLanguageBackbone


# ----------------------------------------------------------------------------- deformable conv
@pytest.mark.parametrize("h,w", [(1, 2), (2, 1), (1, 5), (4, 5)])
def test_gather_accepts_channels_last_inputs_and_equals_torchvision(h, w):
    """The tower's levels come out of VLFuse channels-last, and so do the offsets a conv computes
    from them under autocast; a level one row (or column) high made the gather's `.view` fail."""
    g = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(2, 8, h, w, generator=g).to(memory_format=cl)
    offset = (2 * torch.randn(2, 18, h, w, generator=g)).to(memory_format=cl)
    mask = torch.rand(2, 9, h, w, generator=g).to(memory_format=cl)
    weight, bias = torch.randn(4, 8, 3, 3, generator=g), torch.randn(4, generator=g)
    out = deform_conv3x3_by_gather(x, offset, weight, bias, 1, mask)
    assert torch.equal(out, deform_conv2d(x, offset, weight, bias, padding=1, mask=mask))


def test_tower_with_gather_runs_under_bfloat16_autocast_like_torchvision():
    """MODEL.GLIP.INFERENCE_DTYPE bfloat16 with MODEL.DYHEAD.DEFORM_IMPL gather on the CPU."""
    outs = {}
    for impl in ("torchvision", "gather"):
        torch.manual_seed(0)
        tower = VLDyHeadTower(channels=32, language_dim=64, num_blocks=2, embed_dim=64, num_heads=4,
                              dropout=0.0, bert_heads=2, bert_intermediate=128, gn_groups=8,
                              deform_impl=impl).eval()
        g = torch.Generator().manual_seed(1)
        vis = [torch.randn(2, 32, h, w, generator=g) for h, w in ((8, 10), (4, 5), (2, 3), (1, 2))]
        lang = torch.randn(2, 10, 64, generator=g)
        mask = torch.tensor([[1] * 6 + [0] * 4, [1] * 10])
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs[impl] = tower(vis, lang, mask)
    (v_tv, l_tv), (v_g, l_g) = outs["torchvision"], outs["gather"]
    for a, b in zip(v_tv, v_g):
        assert a.shape == b.shape and torch.isfinite(b).all()
        torch.testing.assert_close(b.float(), a.float(), rtol=0.05, atol=0.05)
    torch.testing.assert_close(l_g.float(), l_tv.float(), rtol=0.05, atol=0.05)


# ----------------------------------------------------------------------------- language backbone
def _save_tiny(tmp_path, kind):
    from transformers import DistilBertConfig, DistilBertModel, RobertaConfig, RobertaModel

    torch.manual_seed(0)
    if kind == "roberta":
        cfg = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=40)
        model = RobertaModel(cfg, add_pooling_layer=False)
    else:
        cfg = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                               max_position_embeddings=40)
        model = DistilBertModel(cfg)
    model.save_pretrained(tmp_path)
    return model.eval()


@pytest.mark.parametrize("kind", ["roberta", "distilbert"])
def test_a_non_bert_text_checkpoint_is_rejected_not_run_as_bert(tmp_path, kind):
    """A RoBERTa folder loaded into BertModel without a word of warning (its weights' names match)
    and gave different features: RoBERTa numbers positions from padding_idx + 1."""
    _save_tiny(tmp_path, kind)
    for pretrained in (True, False):
        with pytest.raises(ValueError, match=f"{kind}.*BERT.*MODEL.LANGUAGE_BACKBONE.MODEL_TYPE"):
            HFBertLanguageBackbone(model_type=str(tmp_path), load_pretrained=pretrained)


def test_a_bert_checkpoint_folder_still_loads(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)
    ref = BertModel(config, add_pooling_layer=False)
    ref.save_pretrained(tmp_path)
    lb = HFBertLanguageBackbone(model_type=str(tmp_path), load_pretrained=True).eval()
    ids, mask = torch.tensor([[2, 5, 6, 3, 0]]), torch.tensor([[1, 1, 1, 1, 0]])
    with torch.no_grad():
        torch.testing.assert_close(lb(ids, mask)["hidden"],
                                   ref.eval()(input_ids=ids, attention_mask=mask).last_hidden_state)


@pytest.mark.parametrize("n_layers", [0, -1, 3])
def test_n_layers_outside_the_encoder_is_a_clear_error(n_layers):
    """N_LAYERS 3 of a 2-layer encoder averaged the 2 layers and divided by 3 (features 2/3 as
    large); 0 averaged every layer and divided by zero."""
    with pytest.raises(ValueError, match="MODEL.LANGUAGE_BACKBONE.N_LAYERS"):
        HFBertLanguageBackbone(model_type="bert-base-uncased", load_pretrained=False,
                               num_hidden_layers=2, num_layers_used=n_layers)
    lb = HFBertLanguageBackbone(model_type="bert-base-uncased", load_pretrained=False,
                                num_hidden_layers=2, num_layers_used=2).eval()
    ids, mask = torch.tensor([[101, 2003, 102]]), torch.ones(1, 3, dtype=torch.long)
    with torch.no_grad():
        out = lb.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        expected = (out.hidden_states[1] + out.hidden_states[2]) / 2 / 2  # official: mean, then / N
        torch.testing.assert_close(lb(ids, mask)["embedded"], expected)


def test_prompts_longer_than_the_position_table_are_a_clear_error():
    """MAX_QUERY_LEN above the encoder's max_position_embeddings (512 for BERT) failed with
    "The expanded size of the tensor (600) must match the existing size (512)"."""
    lb = HFBertLanguageBackbone(model_type="bert-base-uncased", load_pretrained=False,
                                num_hidden_layers=1).eval()
    ids, mask = torch.ones(1, 600, dtype=torch.long), torch.ones(1, 600, dtype=torch.long)
    with pytest.raises(ValueError, match="600 tokens.*512.*MAX_QUERY_LEN"):
        lb(ids, mask)
    assert lb(ids[:, :512], mask[:, :512])["hidden"].shape == (1, 512, 768)


def test_torchvision_deform_conv_takes_bfloat16_input():
    """GLIP-T(A) (no deep fusion) under MODEL.GLIP.INFERENCE_DTYPE bfloat16 on the CPU hands the
    first DyConv the FPN's bfloat16 levels; torchvision's kernels have no bfloat16 version
    ("deformable_im2col" not implemented for 'BFloat16')."""
    g = torch.Generator().manual_seed(0)
    conv = ModulatedDeformConv3x3(8, 6, impl="torchvision")
    x = torch.randn(2, 8, 5, 7, generator=g)
    offset, mask = 2 * torch.randn(2, 18, 5, 7, generator=g), torch.rand(2, 9, 5, 7, generator=g)
    with torch.no_grad():
        exact = conv(x, offset, mask)
        out = conv(x.bfloat16(), offset.bfloat16(), mask.bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            in_autocast = conv(x.bfloat16(), offset, mask)
    assert out.dtype == in_autocast.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), exact, rtol=0.05, atol=0.1)
    torch.testing.assert_close(in_autocast.float(), exact, rtol=0.05, atol=0.1)


def test_glip_a_style_model_infers_in_bfloat16_on_the_cpu():
    from detectron2.modeling import build_model

    from tests.helpers import tiny_cfg

    cfg = tiny_cfg()
    cfg.MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON = False
    cfg.MODEL.DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT = False
    cfg.MODEL.DYHEAD.USE_DFCONV = True
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        ref = model([{"image": image}])[0]["instances"]
        model.inference_dtype = "bfloat16"
        got = model([{"image": image}])[0]["instances"]
    assert got.scores.dtype == torch.float32 and got.pred_boxes.tensor.dtype == torch.float32
    assert len(got) == len(ref) > 0
    assert abs(got.scores[0] - ref.scores[0]) < 0.02
