"""GLIP's dense grounding head as the RPN of a language-aware two-stage model
(MODEL.PROPOSAL_GENERATOR.NAME "GLIPATSSProposalGenerator", or the head's own name
"GLIPATSSHead")."""

import math

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import ImageList, pairwise_iou
from detectron2.utils.events import EventStorage

from glip_d2.modeling import GLIPATSSHead, GLIPATSSProposalGenerator
from tests.roi.roi_helpers import batch, two_stage_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(name="GLIPATSSProposalGenerator"):
    cfg = two_stage_cfg()
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = name
    cfg.MODEL.DYHEAD.CHANNELS = cfg.MODEL.FPN.OUT_CHANNELS
    cfg.MODEL.DYHEAD.NUM_CONVS = 1
    cfg.MODEL.DYHEAD.USE_DFCONV = False
    cfg.MODEL.DYHEAD.FUSE_CONFIG.EMBED_DIM = 64
    cfg.MODEL.DYHEAD.FUSE_CONFIG.NUM_HEADS = 2
    cfg.MODEL.DYHEAD.FUSE_CONFIG.DROPOUT = 0.0
    return cfg


@pytest.fixture(scope="module")
def trained():
    """A two-stage model with GLIP's head as its RPN, after 15 AdamW steps on one batch."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: set up before the one_thread fixture applies
    torch.manual_seed(0)
    model = build_model(_cfg())
    inputs = batch(model)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    history = []
    with EventStorage():
        for step in range(15):
            losses = model(inputs)
            opt.zero_grad()
            sum(losses.values()).backward()
            if step == 0:
                grads = {n: p.grad for n, p in model.proposal_generator.named_parameters()}
            opt.step()
            history.append({k: v.item() for k, v in losses.items()})
    torch.set_num_threads(threads)
    return model, inputs, history, grads


def test_glip_head_trains_as_the_rpn(trained):
    model, _, history, grads = trained
    assert isinstance(model.proposal_generator, GLIPATSSProposalGenerator)
    assert isinstance(model.proposal_generator.head, GLIPATSSHead)
    assert set(history[0]) == {"loss_rpn_cls", "loss_rpn_loc", "loss_rpn_centerness",
                               "loss_cls", "loss_box_reg"}
    assert all(math.isfinite(v) for h in history for v in h.values())
    for name in ("head.bbox_pred.weight", "head.centerness.weight", "head.scorer.bias_lang"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    rpn = [h["loss_rpn_cls"] + h["loss_rpn_loc"] for h in history]
    assert rpn[-1] < 0.7 * rpn[0], rpn


def test_proposals_find_the_objects_at_test_time(trained):
    """With the vocabulary split into two prompt chunks, each image gets at most
    POST_NMS_TOPK_TEST proposals, inside the image, and they cover the trained objects."""
    model, inputs, _, _ = trained
    model.eval()
    model.test_chunk_size = 2
    model.set_vocabulary(["red circle", "blue square", "green triangle"])
    assert len(model._chunks) == 2
    seen = {}
    hook = model.proposal_generator.register_forward_hook(lambda m, a, out: seen.update(p=out[0]))
    with torch.no_grad():
        outputs = model([{"image": x["image"], "height": 160, "width": 192} for x in inputs])
    hook.remove()
    assert len(outputs) == 2 and all(o["instances"].has("pred_classes") for o in outputs)
    for props, x in zip(seen["p"], inputs):
        boxes = props.proposal_boxes.tensor
        assert 0 < len(props) <= model.proposal_generator.post_nms_topk[False]
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 2] <= 192).all() and (boxes[:, 3] <= 160).all()
        best = pairwise_iou(x["instances"].gt_boxes, props.proposal_boxes).max(dim=1)[0]
        assert (best > 0.4).all(), best  # 15 steps: every object roughly covered


def test_the_heads_own_name_gives_a_two_stage_model_that_trains_and_predicts():
    """MODEL.PROPOSAL_GENERATOR.NAME "GLIPATSSHead" (the route that crashed with a TypeError at
    the first forward) trains with the head's RPN losses and predicts."""
    torch.manual_seed(0)
    model = build_model(_cfg("GLIPATSSHead"))
    assert isinstance(model.proposal_generator, GLIPATSSProposalGenerator)
    inputs = batch(model)
    model.train()
    with EventStorage():
        losses = model(inputs)
    assert {"loss_rpn_cls", "loss_rpn_loc", "loss_rpn_centerness"} <= set(losses)
    sum(losses.values()).backward()
    assert model.proposal_generator.head.bbox_pred.weight.grad.abs().sum() > 0
    model.eval()
    model.set_vocabulary(["red circle", "blue square"])
    with torch.no_grad():
        outputs = model([{"image": x["image"]} for x in inputs])
    assert len(outputs) == 2 and all(o["instances"].has("pred_classes") for o in outputs)


def test_generator_without_a_prompt_is_a_clear_error():
    gen = build_model(_cfg()).proposal_generator
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    feats = {f"p{i}": torch.zeros(1, 64, 64 // 2**i, 64 // 2**i) for i in range(3, 8)}
    with pytest.raises(ValueError, match="LanguageAwareRCNN"):
        gen(images, feats, None)


def test_channel_mismatch_is_a_clear_error():
    cfg = _cfg()
    cfg.MODEL.DYHEAD.CHANNELS = 32
    with pytest.raises(ValueError, match="DYHEAD.CHANNELS"):
        build_model(cfg)
