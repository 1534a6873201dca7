"""Review round 2 of the core model (backbone, fusion, text encoder, grounding head, meta-arch):
unusual but valid inputs and options."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from glip_d2.config import add_glip_config
from glip_d2.modeling.backbone import build_swin_fpn_retinanet_backbone

TINY_SWIN = dict(EMBED_DIM=32, DEPTHS=[1, 1, 1, 1], NUM_HEADS=[1, 2, 4, 8], WINDOW_SIZE=7)


def _swin_cfg(**swin):
    cfg = get_cfg()
    add_glip_config(cfg)
    for k, v in {**TINY_SWIN, **swin}.items():
        cfg.MODEL.SWIN[k] = v
    return cfg


# ----------------------------------------------------------------------------- Swin + FPN
@pytest.mark.parametrize(
    "stages,levels",
    [
        (["stage2", "stage3", "stage4"], ["p2", "p3", "p4", "p5", "p6"]),
        (["stage3", "stage4"], ["p3", "p4", "p5", "p6"]),
        (["stage3", "stage4", "stage5"], ["p3", "p4", "p5", "p6", "p7"]),
    ],
)
def test_swin_fpn_top_levels_come_from_the_coarsest_output(stages, levels):
    """MODEL.SWIN.OUT_FEATURES ending before stage5 built an FPN that announced p5/p6 in its
    output_shape (so MODEL.GLIP.IN_FEATURES p2..p6 passed every build check) and failed at the
    first forward with an IndexError: the top block read a fixed "p5", here one of its own
    outputs."""
    torch.manual_seed(0)
    fpn = build_swin_fpn_retinanet_backbone(_swin_cfg(OUT_FEATURES=stages), ShapeSpec(channels=3))
    shapes = fpn.output_shape()
    assert list(shapes) == levels
    x = torch.randn(1, 3, 64, 96)
    out = fpn(x)
    assert list(out) == levels
    for name, feat in out.items():
        stride = shapes[name].stride
        assert feat.shape[-2:] == (-(-64 // stride), -(-96 // stride)), name
    # the first extra level is conv(coarsest FPN output), the second conv(relu(first))
    coarsest = levels[-3]
    top = fpn.top_block
    torch.testing.assert_close(out[levels[-2]], top.p6(out[coarsest]))
    torch.testing.assert_close(out[levels[-1]], top.p7(torch.relu(out[levels[-2]])))


# ----------------------------------------------------------------------------- text encoder
def _save_tiny_bert(path, layers=2):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=64)
    model = BertModel(config, add_pooling_layer=False).eval()
    model.save_pretrained(path)
    return model


def test_more_layers_than_the_pretrained_encoder_is_a_clear_error(tmp_path):
    """NUM_HIDDEN_LAYERS above the checkpoint's depth stacked randomly initialised layers on the
    pretrained ones (transformers only logs a warning), so the text features were noise."""
    from glip_d2.modeling.language.hf_bert import HFBertLanguageBackbone

    ref = _save_tiny_bert(tmp_path, layers=2)
    with pytest.raises(ValueError, match="NUM_HIDDEN_LAYERS is 3.*2 layers"):
        HFBertLanguageBackbone(model_type=str(tmp_path), load_pretrained=True, num_hidden_layers=3)
    ids, mask = torch.tensor([[2, 5, 6, 3, 0]]), torch.tensor([[1, 1, 1, 1, 0]])
    for layers in (-1, 2):  # all layers, or exactly as many: the checkpoint's features
        lb = HFBertLanguageBackbone(
            model_type=str(tmp_path), load_pretrained=True, num_hidden_layers=layers
        ).eval()
        with torch.no_grad():
            torch.testing.assert_close(
                lb(ids, mask)["hidden"], ref(input_ids=ids, attention_mask=mask).last_hidden_state
            )
    # fewer layers keep the first ones; a larger random encoder (no pretrained weights) is fine
    lb = HFBertLanguageBackbone(model_type=str(tmp_path), load_pretrained=True, num_hidden_layers=1)
    assert lb.model.config.num_hidden_layers == 1
    lb = HFBertLanguageBackbone(model_type=str(tmp_path), load_pretrained=False, num_hidden_layers=3)
    assert lb.model.config.num_hidden_layers == 3
