"""DATASETS.CUSTOM / register_custom_coco keep segmentations (as Detectron2's load_coco_json does),
so glip_d2's Mask R-CNN configs train on custom data; a missing mask names the loader."""

import json
import math
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import PolygonMasks
from detectron2.utils.events import EventStorage
from PIL import Image

from glip_d2.data import GroundingDatasetMapper
from glip_d2.data.datasets import register_datasets_from_config
from tests.roi.roi_helpers import batch, two_stage_cfg

POLYGON = [20.0, 20.0, 80.0, 20.0, 80.0, 90.0, 20.0, 90.0]


def _write(tmp_path):
    """Two 160x192 images: a polygon-masked red circle, a crowd RLE, a 4-coordinate (invalid)
    polygon, and a box without any segmentation."""
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((160, 192, 3), 90, np.uint8)).save(tmp_path / name)
    rle = {"counts": [20 * 160 + 10, 30, 0], "size": [160, 192]}  # uncompressed, column-major
    annos = [
        dict(image_id=1, category_id=5, bbox=[20, 20, 60, 70], segmentation=[POLYGON]),
        dict(image_id=1, category_id=9, bbox=[20, 10, 1, 30], segmentation=rle, iscrowd=1),
        dict(image_id=2, category_id=5, bbox=[5, 5, 10, 10], segmentation=[[5, 5, 15, 15]]),
        dict(image_id=2, category_id=9, bbox=[100, 50, 50, 60]),
    ]
    data = {
        "categories": [{"id": 5, "name": "red circle"}, {"id": 9, "name": "blue square"}],
        "images": [{"id": i, "file_name": f, "height": 160, "width": 192}
                   for i, f in ((1, "a.png"), (2, "b.png"))],
        "annotations": [dict(a, id=k + 1, area=1.0, iscrowd=a.get("iscrowd", 0))
                        for k, a in enumerate(annos)],
    }
    (tmp_path / "train.json").write_text(json.dumps(data))


@pytest.fixture
def custom(tmp_path):
    _write(tmp_path)
    name = f"masks_{uuid.uuid4().hex[:8]}"
    cfg = two_stage_cfg()
    cfg.DATASETS.CUSTOM = [[name, str(tmp_path / "train.json"), str(tmp_path)]]
    cfg.DATASETS.TRAIN = (name,)
    assert register_datasets_from_config(cfg) == [name]
    yield name, cfg
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_custom_coco_keeps_segmentations(custom):
    name, _ = custom
    dicts = DatasetCatalog.get(name)
    first, second = dicts[0]["annotations"], dicts[1]["annotations"]
    assert first[0]["segmentation"] == [POLYGON]
    crowd = first[1]["segmentation"]
    assert crowd["size"] == [160, 192] and isinstance(crowd["counts"], (bytes, str))  # compressed
    # the invalid polygon's instance is dropped (as load_coco_json does); the box-only one stays
    assert len(second) == 1 and "segmentation" not in second[0] and second[0]["bbox"] == [100, 50, 50, 60]


def test_mask_rcnn_trains_on_custom_coco(custom):
    """From DATASETS.CUSTOM through the grounding mapper to a Mask R-CNN step with a mask loss."""
    name, cfg = custom
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.RANDOM_FLIP = "none"
    torch.manual_seed(0)
    model = build_model(cfg)
    mapper = GroundingDatasetMapper(cfg, is_train=True)
    item = mapper(DatasetCatalog.get(name)[0])
    masks = item["instances"].gt_masks
    assert isinstance(masks, PolygonMasks) and len(masks) == 1  # the crowd region is not trained
    h, w = item["image"].shape[-2:]
    scale = np.tile([w / 192, h / 160], 4)  # the resize, per axis
    assert np.allclose(masks.polygons[0][0], np.asarray(POLYGON) * scale, atol=1e-3)
    model.train()
    with EventStorage():
        losses = model([item])
    assert "loss_mask" in losses and math.isfinite(losses["loss_mask"].item())


def test_missing_masks_error_names_the_loader():
    cfg = two_stage_cfg()
    cfg.MODEL.MASK_ON = True
    model = build_model(cfg)
    model.train()
    inputs = batch(model, masks=False)
    inputs[0]["dataset_name"] = "my_boxes_only"
    with EventStorage(), pytest.raises(ValueError, match="my_boxes_only.*loader.*register_custom_coco"):
        model(inputs)
