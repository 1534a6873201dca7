"""Issue 16, items 2-4 as a user meets them: the trainer logs the main group's LR; LVIS/FixedAP
evaluation progress (FixedAP too; never "100%" before the end); glip_d2's own RLE-masked data
(the shapes jsons, many annotation tools' exports) with a Mask R-CNN config and the default
INPUT.MASK_FORMAT is a clear error naming the key to set, before training."""

import json
import logging

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.structures import BitMasks
from lvis import LVISEval
from PIL import Image

from glip_d2.data import GroundingDatasetMapper
from glip_d2.data.build import load_checked_train_dicts
from glip_d2.data.datasets import register_datasets_from_config
from glip_d2.engine import MainGroupLRScheduler
from glip_d2.evaluation import FixedAPEvaluator
from glip_d2.evaluation.lvis_progress import lvis_progress
from tests.benchmarks.helpers import write_json
from tests.benchmarks.test_lvis import _lvis_json, _run
from tests.reliability.helpers import load_train_net
from tests.roi.roi_helpers import two_stage_cfg

pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated")

PROGRESS_LOGGER = "glip_d2.evaluation.lvis_progress"


# ------------------------------------------------------------------ item 2: the logged LR
def test_trainer_logs_the_lr_of_the_main_group(tmp_path, names):
    """train_net's Trainer swaps Detectron2's LR hook for the main-group one, at BASE_LR."""
    from detectron2.engine import hooks

    from tests.reliability.test_exact_resume import train_cfg

    train_net = load_train_net()
    cfg = train_net.setup(train_net.argument_parser().parse_args(
        ["--config-file", train_cfg(tmp_path, tmp_path / "out"), "SOLVER.BASE_LR", "0.0003"]))
    try:
        trainer = train_net.Trainer(cfg)
        lr_hooks = [h for h in trainer._hooks if isinstance(h, hooks.LRScheduler)]
        assert [type(h) for h in lr_hooks] == [MainGroupLRScheduler]
        assert lr_hooks[0].base_lr == pytest.approx(3e-4)
    finally:
        from detectron2.data import DatasetCatalog, MetadataCatalog

        DatasetCatalog.remove("resume_shapes_train")
        MetadataCatalog.remove("resume_shapes_train")


# ------------------------------------------------------------------ item 3: progress
def test_fixed_ap_evaluation_shows_progress(tmp_path, names, caplog):
    from glip_d2.data.datasets import register_lvis

    name = names("fixed_ap_progress")
    register_lvis(name, write_json(tmp_path / "lvis.json", _lvis_json()), str(tmp_path))
    with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER):
        res = _run(FixedAPEvaluator(name, max_dets_per_category=10000, distributed=False))
    assert set(res["fixed_ap"]) >= {"AP", "APr", "APc", "APf"}
    messages = [r.getMessage() for r in caplog.records if r.name == PROGRESS_LOGGER]
    assert any(m.startswith("FixedAP evaluation: ") and "detections, 2 images x 3 categories" in m
               for m in messages), messages
    # 2 images x 3 categories x (1 IoU pass + 4 area ranges)
    assert messages[-1].startswith("FixedAP evaluation: 100% (30/30 steps"), messages


class _FakeEval(LVISEval):
    """An LVISEval whose evaluate runs `steps` IoU passes through the (patched) class methods."""

    def __init__(self, images, cats):
        from types import SimpleNamespace

        self.params = SimpleNamespace(cat_ids=list(range(cats)), use_cats=1,
                                      img_ids=list(range(images)), area_rng=[0, 1, 2, 3])
        self.lvis_dt = SimpleNamespace(anns={})

    def evaluate(self):
        for _ in range(len(self.params.img_ids) * len(self.params.cat_ids) * 5):
            self.compute_iou(0, 0)


def test_progress_says_100_percent_only_at_the_end(monkeypatch, caplog):
    """750 steps logged every 187: 748 of 750 reads 99 %, not the "100%" it rounded to."""
    monkeypatch.setattr(LVISEval, "evaluate", _FakeEval.evaluate)
    monkeypatch.setattr(LVISEval, "compute_iou", lambda self, img_id, cat_id: None)
    with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER):
        with lvis_progress("LVIS evaluation"):
            LVISEval.evaluate(_FakeEval(6, 25))
    logged = [m for m in caplog.messages if " steps, " in m]
    assert [m.split(": ")[1].split(" steps")[0] for m in logged] == [
        "25% (187/750", "50% (374/750", "75% (561/750", "99% (748/750", "100% (750/750"]


# ------------------------------------------------------------------ item 4: masks, RLE
def _rle_dataset(tmp_path):
    """One 64x80 image with a non-crowd RLE mask (compressed, as the shapes jsons and many
    annotation tools write them)."""
    Image.fromarray(np.full((64, 80, 3), 90, np.uint8)).save(tmp_path / "a.png")
    mask = np.zeros((64, 80), np.uint8, order="F")
    mask[10:40, 20:60] = 1
    rle = mask_util.encode(mask)
    rle["counts"] = rle["counts"].decode("ascii")
    data = {
        "categories": [{"id": 1, "name": "red circle"}],
        "images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 80}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 10, 40, 30],
                         "area": 1200.0, "iscrowd": 0, "segmentation": rle}],
    }
    (tmp_path / "train.json").write_text(json.dumps(data))
    return mask


def _mask_cfg(tmp_path, name, mask_format):
    cfg = two_stage_cfg()
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = mask_format
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (64,), 80
    cfg.DATASETS.CUSTOM = [[name, str(tmp_path / "train.json"), str(tmp_path)]]
    cfg.DATASETS.TRAIN = (name,)
    register_datasets_from_config(cfg)
    return cfg


def test_rle_masks_need_bitmask_format_said_before_training(tmp_path, names):
    """Detectron2's mapper fails mid-training with "Failed to use mask_format=='polygon'", which
    glip_d2's stream wrapped as a bad record to fix or skip; the fix is a config key."""
    _rle_dataset(tmp_path)
    name = names("rle_masks")
    cfg = _mask_cfg(tmp_path, name, "polygon")
    with pytest.raises(ValueError, match=rf"{name}.*RLE.*INPUT\.MASK_FORMAT bitmask"):
        load_checked_train_dicts(cfg, GroundingDatasetMapper(cfg, is_train=True))


def test_rle_masks_train_with_bitmask_format(tmp_path, names):
    mask = _rle_dataset(tmp_path)
    name = names("rle_masks")
    cfg = _mask_cfg(tmp_path, name, "bitmask")
    mapper = GroundingDatasetMapper(cfg, is_train=True)
    (records,) = load_checked_train_dicts(cfg, mapper)
    item = mapper(records[0])
    masks = item["instances"].gt_masks
    assert isinstance(masks, BitMasks) and masks.tensor.shape == (1, 64, 80)
    assert np.array_equal(masks.tensor[0].numpy(), mask.astype(bool))


def test_a_box_only_image_under_a_two_stage_mask_head_is_refused_before_training(tmp_path, names,
                                                                                caplog):
    """Detectron2's ROI mask head needs every image's masks: a dataset with box-only images
    failed at the first batch that drew one ("MODEL.MASK_ON needs instances.gt_masks"), after
    the set-up, possibly hours in. One-stage GLIP trains such images on boxes only."""
    _rle_dataset(tmp_path)
    data = json.loads((tmp_path / "train.json").read_text())
    data["images"].append({"id": 2, "file_name": "a.png", "height": 64, "width": 80})
    data["annotations"].append({"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 1, 9, 9],
                                "area": 81.0, "iscrowd": 0})  # a box, no segmentation
    (tmp_path / "train.json").write_text(json.dumps(data))
    name = names("box_only_masks")
    cfg = _mask_cfg(tmp_path, name, "bitmask")
    with pytest.raises(ValueError, match=rf"{name}.*1 of its 2 training images have boxes without "
                                         r"any 'segmentation' \(the first: image 2\); the mask head "
                                         r"of LanguageAwareRCNN"):
        load_checked_train_dicts(cfg, GroundingDatasetMapper(cfg, is_train=True))
    from tests.helpers import tiny_cfg

    one_stage = tiny_cfg()
    one_stage.MODEL.MASK_ON, one_stage.INPUT.MASK_FORMAT = True, "bitmask"
    one_stage.DATASETS.TRAIN = (name,)
    one_stage.MODEL.GLIP.VOCABULARY = []
    (records,) = load_checked_train_dicts(one_stage, GroundingDatasetMapper(one_stage, is_train=True))
    assert len(records) == 2
    # ... but not when no image has a mask: loss_mask was 0 at every step, the head untrained
    for a in data["annotations"]:
        a.pop("segmentation", None)
    (tmp_path / "no_masks.json").write_text(json.dumps(data))
    no_masks = names("no_masks")
    one_stage.DATASETS.CUSTOM = [[no_masks, str(tmp_path / "no_masks.json"), str(tmp_path)]]
    one_stage.DATASETS.TRAIN = (no_masks,)
    register_datasets_from_config(one_stage)
    # a warning, not an error: a pretrained mask model may be fine-tuned on boxes only
    with caplog.at_level(logging.WARNING, logger="glip_d2"):
        (records,) = load_checked_train_dicts(one_stage, GroundingDatasetMapper(one_stage, is_train=True))
    assert len(records) == 2
    assert "no annotation of the training datasets has a 'segmentation', so the mask head does " \
           "not train" in caplog.text


# ------------------------------------------------------------------ item 3: the protocol's datasets
def test_missing_protocol_dataset_names_its_file(tmp_path, monkeypatch):
    """`--protocol lvis_minival` without the json: the error said lvis_v1_minival has "no glip_d2
    or Detectron2 builtin of that name", though glip_d2 registers it once its json is present."""
    from glip_d2.engine import check_datasets_present

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        check_datasets_present(["lvis_v1_minival", "no_such_dataset_16b"])
    message = str(error.value)
    assert "no glip_d2 or Detectron2 builtin" not in message
    expected = tmp_path / "coco" / "annotations" / "lvis_v1_minival_inserted_image_name.json"
    assert f"lvis_v1_minival: not registered: glip_d2 registers it when {expected} exists" in message
    assert "no_such_dataset_16b: not registered" in message
