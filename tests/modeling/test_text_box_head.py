"""The X-VLM text-to-box head (MODEL.GLIP.TEXT_BOX_HEAD): losses, head, model, RefCOCO evaluator."""
import copy
import uuid

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from glip_d2.evaluation import RefExpEvaluator
from glip_d2.modeling.heads.text_box import XVLMBoxHead, text_box_losses
from tests.helpers import make_input, tiny_cfg

EXPR = "the red circle left of the blue square"


def _giou_reference(a, b):
    """GIoU of two xyxy boxes, from the definition."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def test_losses_match_l1_and_giou_from_their_definitions():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.6, 0.1, 0.1]])
    target = torch.tensor([[0.55, 0.45, 0.3, 0.4], [0.7, 0.2, 0.2, 0.3]])
    got = text_box_losses(pred, target)
    l1 = sum(abs(p - t) for pr, tr in zip(pred.tolist(), target.tolist()) for p, t in zip(pr, tr)) / 2
    assert got["loss_text_box_l1"].item() == pytest.approx(l1, rel=1e-5)

    def xyxy(b):
        return [b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2]

    gious = [_giou_reference(xyxy(p), xyxy(t)) for p, t in zip(pred.tolist(), target.tolist())]
    assert gious[1] < 0  # disjoint boxes: GIoU below 0
    assert got["loss_text_box_giou"].item() == pytest.approx(sum(1 - g for g in gious) / 2, rel=1e-5)
    same = text_box_losses(target, target)
    assert same["loss_text_box_l1"].item() == 0 and same["loss_text_box_giou"].item() == pytest.approx(0, abs=1e-5)


def test_head_ignores_the_batch_padding():
    torch.manual_seed(0)
    head = XVLMBoxHead(channels=8, language_dim=6, strides=(8, 16), hidden=16, num_heads=2)
    visual = [torch.randn(2, 8, 8, 8), torch.randn(2, 8, 4, 4)]
    text = torch.randn(2, 5, 6)
    sizes = [(64, 64), (40, 48)]  # image 1 fills a 40x48 corner of the padded 64x64 batch
    box = head(visual, text, torch.ones(2, 5), sizes)
    assert box.shape == (2, 4) and ((box > 0) & (box < 1)).all()
    # what lies in image 1's padding does not change its box
    noisy = [v.clone() for v in visual]
    noisy[0][1, :, 5:, :] += 10  # rows of cells with centres below 40 px
    noisy[0][1, :, :, 6:] += 10  # columns of cells with centres right of 48 px
    torch.testing.assert_close(head(noisy, text, torch.ones(2, 5), sizes)[1], box[1])


def test_position_enters_the_values_not_the_attention_by_default():
    """POSITION_IN "values": the [CLS] attends by content only, so a map whose cells all look the
    same gets uniform attention and the box comes from the averaged positions; "keys" puts the
    position into the attention logits too (a spatial prior). Same parameters either way."""
    torch.manual_seed(0)
    heads = {p: XVLMBoxHead(channels=8, language_dim=6, strides=(8,), hidden=16, num_heads=2, position_in=p)
             for p in ("values", "keys")}
    heads["keys"].load_state_dict(heads["values"].state_dict())
    flat = [torch.randn(1, 8, 1, 1).expand(1, 8, 6, 6).contiguous()]  # every cell the same feature
    weights = {}
    for p, head in heads.items():
        attend = head.attend
        head.attend = lambda *a, p=p, attend=attend: weights.setdefault(p, attend(*a))
        head(flat, torch.randn(1, 3, 6), torch.ones(1, 3), [(48, 48)])
        weights[p] = weights[p][1][0, 0]  # (heads, N) -> head 0
    torch.testing.assert_close(weights["values"], torch.full((36,), 1 / 36))
    assert (weights["keys"] - 1 / 36).abs().max() > 1e-3  # the position alone moves the attention
    with pytest.raises(ValueError, match="POSITION_IN must be 'values' or 'keys'"):
        XVLMBoxHead(channels=8, language_dim=6, position_in="queries")
    with pytest.raises(ValueError, match="multiple of NUM_HEADS"):
        XVLMBoxHead(channels=8, language_dim=6, hidden=10, num_heads=4)


def _cfg(predict=False):
    cfg = tiny_cfg()
    cfg.MODEL.GLIP.TEXT_BOX_HEAD.NAME = "XVLMBoxHead"
    cfg.MODEL.GLIP.TEXT_BOX_HEAD.HIDDEN_DIM = 32
    cfg.MODEL.GLIP.TEXT_BOX_HEAD.PREDICT = predict
    return cfg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(_cfg())


def _refexp(m, box, seed):
    return make_input(m, EXPR, [box], [(0, len(EXPR))], seed=seed)


def test_detach_trains_the_head_only(model):
    """TEXT_BOX_HEAD.DETACH: the head's loss reaches the head's weights, and the fusion tower
    only without it."""
    cfg = _cfg()
    cfg.MODEL.GLIP.TEXT_BOX_HEAD.DETACH = True
    assert type(model).from_config(cfg)["text_box_detach"] is True and not model.text_box_detach
    m = copy.deepcopy(model).train()
    batch = [_refexp(m, [10, 20, 70, 90], 0)]
    for detach in (False, True):
        m.zero_grad(set_to_none=True)
        m.text_box_detach = detach
        m(batch)["loss_text_box_giou"].backward()
        assert m.text_box_head.query.weight.grad.abs().sum() > 0
        tower = [p.grad for p in m.head.parameters() if p.grad is not None]
        assert any(g.abs().sum() > 0 for g in tower) == (not detach), detach


def test_model_trains_the_head_on_one_box_images_only(model):
    m = copy.deepcopy(model).train()
    assert any(k.startswith("text_box_head.") for k in m.state_dict())
    two = make_input(m, "red circle. blue square", [[10, 20, 70, 90], [100, 30, 170, 120]], [(0, 10), (12, 23)])
    losses = m([two])
    assert losses["loss_text_box_l1"].item() == 0 and losses["loss_text_box_giou"].item() == 0
    batch = [_refexp(m, [10, 20, 70, 90], 0), two, _refexp(m, [90, 40, 180, 150], 1)]
    losses = m(batch)
    assert losses["loss_text_box_l1"] > 0
    losses["loss_text_box_giou"].backward()
    assert m.text_box_head.query.weight.grad.abs().sum() > 0
    # overfit the head on the two expressions, on fixed fused features (the forward above,
    # without the 10 s of tower passes)
    images = m.preprocess_image(batch)
    _, lang = m.encode_text([x["caption"] for x in batch])
    with torch.no_grad():
        out = m.head(m.extract_features(images), lang)
    inst = [x["instances"] for x in batch]
    opt = torch.optim.Adam(m.text_box_head.parameters(), lr=1e-2)
    hist = []
    for _ in range(30):
        losses = m._text_box_losses(out, inst, images.image_sizes)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        hist.append(sum(losses.values()).item())
    assert hist[-1] < 0.6 * hist[0], hist


def test_predict_answers_each_caption_with_one_box_scored_by_the_refcoco_evaluator(model):
    m = copy.deepcopy(model)
    m.text_box_predict = True
    m.eval()
    name = f"test_text_box_{uuid.uuid4().hex[:8]}"
    gt = [[10, 20, 70, 90], [90, 40, 180, 150]]
    records = [
        {"image_id": k, "height": 160, "width": 192, "caption": EXPR,
         "annotations": [{"bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "bbox_mode": 1,
                          "tokens_positive": [[0, len(EXPR)]]}]}
        for k, b in enumerate(gt)
    ]
    DatasetCatalog.register(name, lambda: records)
    try:
        ev = RefExpEvaluator(name, distributed=False)
        ev.reset()
        with torch.no_grad():
            for k in range(2):
                x = {"image": _refexp(m, gt[k], k)["image"], "image_id": k, "height": 160,
                     "width": 192, "caption": EXPR, "phrase_spans": [[0, len(EXPR)]]}
                out = m([x])[0]["instances"]
                assert len(out) == 1 and out.pred_classes.tolist() == [0] and out.scores.tolist() == [1.0]
                # steer the head's answer to the ground truth (image 0) or far from it (image 1)
                out.pred_boxes.tensor[:] = torch.tensor(gt[0] if k == 0 else [0, 0, 5, 5], dtype=torch.float32)
                ev.process([x], [{"instances": out}])
        assert ev.evaluate()["refexp"]["Acc@1"] == pytest.approx(50.0)
    finally:
        DatasetCatalog.remove(name)
    # without PREDICT the grounding detections come back
    m.text_box_predict = False
    with torch.no_grad():
        out = m([{"image": x["image"], "caption": EXPR, "phrase_spans": [[0, len(EXPR)]]}])[0]["instances"]
    assert out.has("anchor_index") and (out.scores < 1).all()
