"""Speed switches keep the detections: SDPA attention, batched (image, chunk) inference, autocast.

Every switch is off by default (the fp32 parity path); these tests compare each one against it.
"""

import copy

import pytest
import torch
from detectron2.modeling import build_model

from glip_d2.modeling.fusion.bi_attention import BiMultiHeadAttention
from glip_d2.modeling.meta_arch.glip import stack_prompts
from tests.helpers import make_input, tiny_cfg

NAMES = ["red circle", "blue square", "green triangle", "purple star", "yellow hexagon"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0
    return build_model(cfg).eval()


def _images(m):
    return [
        {"image": make_input(m, "x", [], [], size=(160, 192), seed=1)["image"]},
        {"image": make_input(m, "x", [], [], size=(128, 224), seed=2)["image"], "height": 64,
         "width": 112},
    ]


def _detections(m, inputs):
    with torch.no_grad():
        return [x["instances"] for x in m(copy.deepcopy(inputs))]


def _same(a, b, score_tol):
    """Same (anchor, label) detections, scores and boxes within tolerance."""
    assert len(a) == len(b)
    ka = list(zip(a.anchor_index.tolist(), a.pred_classes.tolist()))
    kb = list(zip(b.anchor_index.tolist(), b.pred_classes.tolist()))
    assert set(ka) == set(kb)
    order = torch.tensor([kb.index(k) for k in ka])
    assert (a.scores - b.scores[order]).abs().max() <= score_tol
    assert (a.pred_boxes.tensor - b.pred_boxes.tensor[order]).abs().max() <= 1e-3


def test_sdpa_attention_equals_the_official_products_with_padding_and_gradients():
    torch.manual_seed(0)
    ref = BiMultiHeadAttention(16, 12, 32, 4, dropout=0.0)
    fast = BiMultiHeadAttention(16, 12, 32, 4, dropout=0.0, impl="sdpa")
    fast.load_state_dict(ref.state_dict())
    v = torch.randn(2, 50, 16, requires_grad=True)
    lang = torch.randn(2, 7, 12, requires_grad=True)
    mask = torch.ones(2, 7)
    mask[1, 4:] = 0
    outs = []
    for m in (ref, fast):
        dv, dl = m(v, lang, mask)
        (dv.square().sum() + dl.square().sum()).backward()
        outs.append((dv.detach(), dl.detach(), v.grad.clone(), lang.grad.clone()))
        v.grad = lang.grad = None
    for r, f in zip(*outs):
        torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-5)
    # padding changes nothing on the vision side: drop the padded tokens of image 1
    dv, _ = fast(v[1:], lang[1:, :4], mask[1:, :4])
    torch.testing.assert_close(dv, outs[1][0][1:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="ATTENTION"):
        BiMultiHeadAttention(16, 12, 32, 4, impl="flash")


def test_sdpa_model_gives_the_same_detections(model):
    fast = copy.deepcopy(model)
    for block in fast.head.tower.blocks:
        block.fuse.attn.impl = "sdpa"
    fast.set_vocabulary(NAMES[:3])
    ref = copy.deepcopy(model)
    ref.set_vocabulary(NAMES[:3])
    for a, b in zip(_detections(fast, _images(model)), _detections(ref, _images(model))):
        _same(a, b, score_tol=1e-5)


@pytest.mark.parametrize("batch", [4, 16])
def test_batched_chunks_and_images_give_the_serial_detections(model, batch):
    """3 chunks x 2 images of different sizes: 6 (image, chunk) pairs in groups of `batch`."""
    ref = copy.deepcopy(model)
    ref.test_chunk_size = 2
    ref.set_vocabulary(NAMES)
    assert len(ref._chunks) == 3
    fast = copy.deepcopy(ref)
    fast.inference_batch = batch
    calls = []
    hook = fast.head.tower.register_forward_hook(lambda m, a, o: calls.append(a[0][0].shape[0]))
    got = _detections(fast, _images(model))
    hook.remove()
    assert calls == ([4, 2] if batch == 4 else [6])  # pairs per tower pass
    for a, b in zip(got, _detections(ref, _images(model))):
        assert a.image_size == b.image_size
        _same(a, b, score_tol=1e-5)


def test_stack_prompts_pads_shorter_prompts(model):
    m = copy.deepcopy(model)
    short = m._cached_prompt("red circle", [[(0, 10)]])
    long = m._cached_prompt("red circle. blue square", [[(0, 10)], [(12, 23)]])
    lang, pmaps = stack_prompts([short, long])
    t = long[1]["masks"].shape[1]
    assert short[1]["masks"].shape[1] < t
    assert lang["hidden"].shape[:2] == lang["embedded"].shape[:2] == lang["masks"].shape == (2, t)
    assert lang["masks"][0, short[1]["masks"].shape[1]:].eq(0).all()
    assert [p.shape for p in pmaps] == [(1, t), (2, t)]
    assert torch.equal(pmaps[0][:, : short[2].shape[1]], short[2])


def test_bfloat16_inference_is_close_to_float32(model):
    ref = copy.deepcopy(model)
    ref.set_vocabulary(NAMES[:3])
    fast = copy.deepcopy(ref)
    fast.inference_dtype = "bfloat16"
    for a, b in zip(_detections(fast, _images(model)), _detections(ref, _images(model))):
        assert a.scores.dtype == torch.float32 and a.pred_boxes.tensor.dtype == torch.float32
        assert len(a) == len(b) == 100
        # the best-scoring detections mostly agree; scores within bf16 precision
        top_a = set(zip(a.anchor_index[:20].tolist(), a.pred_classes[:20].tolist()))
        top_b = set(zip(b.anchor_index[:20].tolist(), b.pred_classes[:20].tolist()))
        assert len(top_a & top_b) >= 10
        assert abs(a.scores[0] - b.scores[0]) < 0.02


def test_speed_switches_are_config_keys_with_clear_errors():
    cfg = tiny_cfg()
    assert cfg.MODEL.GLIP.INFERENCE_BATCH == 1 and cfg.MODEL.GLIP.INFERENCE_DTYPE == "float32"
    assert cfg.MODEL.DYHEAD.FUSE_CONFIG.ATTENTION == "official"
    cfg.MODEL.GLIP.INFERENCE_BATCH = 8
    cfg.MODEL.GLIP.INFERENCE_DTYPE = "bfloat16"
    cfg.MODEL.DYHEAD.FUSE_CONFIG.ATTENTION = "sdpa"
    m = build_model(cfg)
    assert m.inference_batch == 8 and m.inference_dtype == "bfloat16"
    assert all(b.fuse.attn.impl == "sdpa" for b in m.head.tower.blocks)
    cfg.MODEL.GLIP.INFERENCE_DTYPE = "int8"
    with pytest.raises(ValueError, match="INFERENCE_DTYPE"):
        build_model(cfg)
    cfg.MODEL.GLIP.INFERENCE_DTYPE = "float32"
    cfg.MODEL.GLIP.INFERENCE_BATCH = 0
    with pytest.raises(ValueError, match="INFERENCE_BATCH"):
        build_model(cfg)


def test_compile_switch_compiles_backbone_and_head_for_inference_only(model, monkeypatch):
    compiled = []

    def fake_compile(module, mode=None):
        compiled.append((type(module).__name__, mode))
        return module  # eager stand-in: the wiring is under test, not Inductor

    monkeypatch.setattr(torch, "compile", fake_compile)
    m = copy.deepcopy(model)
    m.compile_mode = "reduce-overhead"
    m.set_vocabulary(NAMES[:3])
    keys = set(m.state_dict())
    a = _detections(m, _images(model))
    _detections(m, _images(model))  # compiled once, reused
    assert sorted(compiled) == [("GLIPATSSHead", "reduce-overhead"), ("GLIPFPN", "reduce-overhead")]
    assert set(m.state_dict()) == keys  # checkpoints keep their keys
    ref = copy.deepcopy(model)
    ref.set_vocabulary(NAMES[:3])
    for x, y in zip(a, _detections(ref, _images(model))):
        _same(x, y, score_tol=0.0)
    cfg = tiny_cfg()
    cfg.MODEL.GLIP.COMPILE = "fast"
    with pytest.raises(ValueError, match="MODEL.GLIP.COMPILE"):
        build_model(cfg)
