"""The one-stage GLIP mask head (MODEL.MASK_ON): training, masks at inference, segm AP."""
import copy
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from glip_d2.data.builtin import register_shapes_split
from glip_d2.data.shapes import ALL_CLASSES
from glip_d2.engine import fast_coco_eval_available
from tests.helpers import make_input, tiny_cfg

CAPTION = "red circle. blue square. green triangle"


def _cfg():
    cfg = tiny_cfg()
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 1
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0  # an untrained model scores below the default threshold
    return cfg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(_cfg())


def _with_masks(x):
    """Disc-shaped masks inside each box."""
    h, w = x["instances"].image_size
    yy, xx = np.mgrid[:h, :w]
    masks = []
    for x0, y0, x1, y1 in x["instances"].gt_boxes.tensor.tolist():
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, min(x1 - x0, y1 - y0) / 2
        masks.append(torch.from_numpy((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r))
    x["instances"].gt_masks = BitMasks(torch.stack(masks)) if masks else BitMasks(torch.zeros(0, h, w))
    return x


def _batch(m):
    return [
        _with_masks(make_input(m, CAPTION, [[10, 20, 70, 90], [100, 30, 170, 120]], [(0, 10), (12, 23)], seed=0)),
        _with_masks(make_input(m, CAPTION, [[40, 40, 120, 150]], [(25, 39)], seed=1)),
    ]


def test_mask_head_is_outside_the_grounding_head_and_off_by_default(model):
    assert any(k.startswith("mask_head.") for k in model.state_dict())
    assert not any(k.startswith("head.") and "mask" in k for k in model.state_dict())
    torch.manual_seed(0)
    assert build_model(tiny_cfg()).mask_head is None


def test_mask_loss_decreases_on_a_tiny_overfit(model):
    m = copy.deepcopy(model).train()
    # the whole model runs and every loss is back-propagated; only the mask head is stepped,
    # so the overfit is not blurred by the fused features moving under it
    opt = torch.optim.Adam(m.mask_head.parameters(), lr=1e-2)
    batch = _batch(m)
    hist = []
    with EventStorage():
        for _ in range(12):
            losses = m(batch)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            hist.append(losses["loss_mask"].item())
    assert {"loss_cls", "loss_box_reg", "loss_centerness", "loss_mask"} <= set(losses)
    assert hist[0] == pytest.approx(np.log(2), abs=0.15)  # BCE of logits near 0
    assert hist[-1] < 0.7 * hist[0], hist
    assert m.head.scorer.proj_text.weight.grad is not None  # the other losses still train


def test_images_without_masks_do_not_train_the_mask_head(model):
    m = copy.deepcopy(model).train()
    no_masks = make_input(m, CAPTION, [[10, 20, 70, 90]], [(0, 10)])
    with EventStorage():
        alone = m([no_masks])["loss_mask"]
        assert alone.item() == 0 and alone.requires_grad
        torch.manual_seed(0)
        mixed = m([_batch(m)[1], no_masks])["loss_mask"]
        torch.manual_seed(0)
        single = m([_batch(m)[1]])["loss_mask"]
    assert mixed.item() > 0
    assert mixed.item() == pytest.approx(single.item(), rel=1e-4)


def test_inference_gives_a_mask_per_detection_at_image_size(model):
    m = model.eval()
    with torch.no_grad():
        out = m([{"image": torch.zeros(3, 96, 128, dtype=torch.uint8), "height": 192, "width": 256}])
    inst = out[0]["instances"]
    assert len(inst) > 0 and not inst.has("chunk")
    assert inst.pred_masks.shape == (len(inst), 192, 256) and inst.pred_masks.dtype == torch.bool


def test_every_chunk_masks_its_own_detections(model):
    m = copy.deepcopy(model).eval()
    m.test_chunk_size = 1
    m.set_vocabulary(["red circle", "blue square"])
    with torch.no_grad():
        inst = m([{"image": torch.zeros(3, 96, 128, dtype=torch.uint8)}])[0]["instances"]
    assert set(inst.pred_classes.tolist()) == {0, 1}
    assert inst.pred_masks.shape[0] == len(inst)


def test_coco_evaluator_scores_segm_ap(model, tmp_path):
    name = f"test_mask_shapes_{uuid.uuid4().hex[:8]}"
    register_shapes_split(name, "val", root=str(tmp_path), num_images=3, image_size=128)
    try:
        dicts = DatasetCatalog.get(name)
        inputs = [
            {"image": torch.as_tensor(utils.read_image(d["file_name"], "RGB").transpose(2, 0, 1).copy()),
             "image_id": d["image_id"], "height": d["height"], "width": d["width"]}
            for d in dicts
        ]
        m = copy.deepcopy(model).eval()
        m.set_vocabulary(list(ALL_CLASSES))
        ev = COCOEvaluator(name, tasks=("bbox", "segm"), distributed=False, output_dir=str(tmp_path),
                           use_fast_impl=fast_coco_eval_available())
        ev.reset()
        with torch.no_grad():
            for x in inputs:
                ev.process([x], m([x]))
        res = ev.evaluate()
        assert set(res) == {"bbox", "segm"} and np.isfinite(res["segm"]["AP"])
        # the same evaluator gives 100 to the ground-truth masks: the json masks are exact
        ev.reset()
        for x, d in zip(inputs, dicts):
            inst = Instances((d["height"], d["width"]))
            anns = d["annotations"]
            inst.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in anns], dtype=torch.float32))
            inst.pred_boxes.tensor[:, 2:] += inst.pred_boxes.tensor[:, :2]  # xywh -> xyxy
            inst.scores = torch.ones(len(anns))
            inst.pred_classes = torch.tensor([a["category_id"] for a in anns])
            masks = [utils.annotations_to_instances([a], (d["height"], d["width"]), "bitmask").gt_masks.tensor[0] for a in anns]
            inst.pred_masks = torch.stack(masks)
            ev.process([x], [{"instances": inst}])
        res = ev.evaluate()
        assert res["segm"]["AP"] == pytest.approx(100.0)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
