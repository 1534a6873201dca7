"""User journey: a Detectron2 pipeline (stock model-zoo config, DefaultPredictor, Visualizer,
COCOEvaluator, a trainer, a stock checkpoint) with glip_d2's language-aware R-CNN plugged in."""

import json
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import DefaultPredictor
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from detectron2.utils.visualizer import Visualizer

from glip_d2 import add_glip_config
from glip_d2.checkpoint.checkpointer import GLIPCheckpointer
from glip_d2.data import GroundingDatasetMapper

from .roi_helpers import tiny_text

FASTER = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
MASK = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
CASCADE = "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml"
RETINA = "COCO-Detection/retinanet_R_50_FPN_1x.yaml"
# non-contiguous ids, as in COCO: the evaluator maps pred_classes back through the metadata
CATEGORIES = [{"id": 1, "name": "red square"}, {"id": 3, "name": "blue square"}]


def _flat(node, prefix=""):
    out = {}
    for k, v in node.items():
        if hasattr(v, "items"):
            out.update(_flat(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def _stock_cfg(name, glip=True):
    cfg = get_cfg()
    if glip:
        add_glip_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(name))
    return cfg


def _shrink(cfg):
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 50
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.INPUT.MIN_SIZE_TRAIN = (96,)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    cfg.INPUT.MIN_SIZE_TEST = 96
    cfg.INPUT.MAX_SIZE_TEST = 128
    return cfg


def _language_aware(name):
    """A stock config plus the documented keys, shrunk to run on the CPU."""
    cfg = _shrink(_stock_cfg(name))
    cfg.MODEL.META_ARCHITECTURE = "LanguageAwareRCNN"
    cfg.MODEL.ROI_HEADS.NAME = (
        "LanguageAwareCascadeROIHeads" if "cascade" in name else "LanguageAwareStandardROIHeads"
    )
    tiny_text(cfg)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # an untrained model scores low
    return cfg


@pytest.fixture
def coco_dataset(tmp_path):
    """A lazily registered COCO-format dataset (register_coco_instances) of 4 images."""
    import cv2

    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(4):
        im = rng.integers(0, 60, (96, 128, 3), dtype=np.uint8)
        im[10:50, 10:60] = (0, 0, 255)
        im[40:90, 70:120] = (255, 0, 0)
        cv2.imwrite(str(tmp_path / f"{i}.png"), im)
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 96, "width": 128})
        for j, (cat, (x, y, w, h)) in enumerate([(1, (10, 10, 50, 40)), (3, (70, 40, 50, 50))]):
            anns.append({
                "id": 2 * i + j + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, w, h],
                "area": w * h, "iscrowd": 0,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            })
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps({"images": images, "annotations": anns,
                                     "categories": CATEGORIES}))
    name = f"journey_{os.path.basename(tmp_path)}"
    register_coco_instances(name, {}, str(json_file), str(tmp_path))
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.mark.parametrize("name", [FASTER, RETINA, MASK, CASCADE])
def test_add_glip_config_keeps_stock_config_values(name):
    stock, glip = _flat(_stock_cfg(name, glip=False)), _flat(_stock_cfg(name))
    assert {k: glip[k] for k in stock} == stock
    # merged first, glip_d2's keys added after: the same
    after = get_cfg()
    after.merge_from_file(model_zoo.get_config_file(name))
    add_glip_config(after)
    assert {k: _flat(after)[k] for k in stock} == stock


def test_default_predictor_detects_classes_of_lazily_registered_test_set(coco_dataset):
    """DATASETS.TEST[0] registered with register_coco_instances (class names known only once
    the json is loaded) is the vocabulary of a model built before anything loaded it."""
    cfg = _language_aware(FASTER)
    cfg.DATASETS.TEST = (coco_dataset,)
    assert MetadataCatalog.get(coco_dataset).get("thing_classes", None) is None
    predictor = DefaultPredictor(cfg)
    assert predictor.model.vocabulary == ["red square", "blue square"]
    assert predictor.metadata.thing_classes == ["red square", "blue square"]
    image = np.zeros((96, 128, 3), dtype=np.uint8)
    inst = predictor(image)["instances"]
    assert len(inst) > 0 and set(inst.pred_classes.tolist()) <= {0, 1}


def test_one_stage_glip_takes_the_lazily_registered_test_set_as_vocabulary(coco_dataset):
    """The same for the one-stage GLIP (e.g. on a stock RetinaNet config)."""
    from tests.helpers import tiny_cfg

    cfg = tiny_cfg()
    cfg.MODEL.GLIP.VOCABULARY = []
    cfg.DATASETS.TEST = (coco_dataset,)
    assert MetadataCatalog.get(coco_dataset).get("thing_classes", None) is None
    assert build_model(cfg).vocabulary == ["red square", "blue square"]


def test_missing_test_set_leaves_model_buildable(tmp_path, caplog):
    name = f"journey_missing_{os.path.basename(tmp_path)}"
    register_coco_instances(name, {}, str(tmp_path / "absent.json"), str(tmp_path))
    try:
        cfg = _language_aware(FASTER)
        cfg.DATASETS.TEST = (name,)
        with caplog.at_level(logging.WARNING):
            model = build_model(cfg)
        assert model.vocabulary is None
        assert any(name in r.getMessage() and "set_vocabulary" in r.getMessage()
                   for r in caplog.records)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_stock_roi_heads_with_language_aware_rcnn_is_a_build_error():
    cfg = _language_aware(FASTER)
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"  # META_ARCHITECTURE changed, the heads not
    with pytest.raises(ValueError, match="LanguageAwareStandardROIHeads"):
        build_model(cfg)


def test_stock_dataset_mapper_is_a_clear_training_error(coco_dataset):
    from detectron2.data import DatasetMapper

    cfg = _language_aware(FASTER)
    model = build_model(cfg).train()
    batch = [DatasetMapper(cfg, is_train=True)(d) for d in DatasetCatalog.get(coco_dataset)[:1]]
    with EventStorage(0), pytest.raises(ValueError, match="GroundingDatasetMapper"):
        model(batch)


@pytest.mark.parametrize("name", [MASK, CASCADE])
def test_stock_config_language_aware_trains_a_step(name, coco_dataset):
    cfg = _language_aware(name)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    mapper = GroundingDatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get(coco_dataset)[:2]]
    assert batch[0]["instances"].has("gt_masks")
    with EventStorage(0):
        losses = model(batch)
    expected = {"loss_mask", "loss_rpn_cls", "loss_rpn_loc"}
    expected |= ({f"loss_{k}_stage{s}" for k in ("cls", "box_reg") for s in range(3)}
                 if "cascade" in name else {"loss_cls", "loss_box_reg"})
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.mask_head.predictor.weight.shape[0] == 1  # class-agnostic masks


def test_trainer_predictor_visualizer_evaluator(coco_dataset, tmp_path):
    """train_net's Trainer trains the stock Mask R-CNN config made language-aware; the saved
    model is what DefaultPredictor loads; Visualizer and COCOEvaluator take its outputs."""
    from tests.reliability.helpers import load_train_net

    Trainer = load_train_net().Trainer
    cfg = _language_aware(MASK)
    cfg.DATASETS.TRAIN = (coco_dataset,)
    cfg.DATASETS.TEST = (coco_dataset,)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.MAX_ITER = 2
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    assert os.path.isfile(final)

    cfg.MODEL.WEIGHTS = final
    predictor = DefaultPredictor(cfg)
    import cv2

    image = cv2.imread(DatasetCatalog.get(coco_dataset)[0]["file_name"])
    inst = predictor(image)["instances"]
    trained = trainer.model.eval()
    with torch.no_grad():
        ref = trained([{"image": torch.as_tensor(image.transpose(2, 0, 1).copy()),
                        "height": 96, "width": 128}])[0]["instances"]
    assert inst.image_size == (96, 128)
    assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}
    torch.testing.assert_close(inst.scores, ref.scores)
    torch.testing.assert_close(inst.pred_boxes.tensor, ref.pred_boxes.tensor)

    vis = Visualizer(image[:, :, ::-1], predictor.metadata).draw_instance_predictions(inst[:3])
    assert vis.get_image().shape == (96, 128, 3)

    from glip_d2.engine.evaluation import fast_coco_eval_available

    # Detectron2's own evaluator; its compiled ops only where Detectron2 is built (not on the
    # newest stack's stand-in detectron2._C)
    evaluator = COCOEvaluator(coco_dataset, output_dir=str(tmp_path / "eval"),
                              use_fast_impl=fast_coco_eval_available())
    res = inference_on_dataset(predictor.model, build_detection_test_loader(cfg, coco_dataset),
                               evaluator)
    assert set(res) == {"bbox", "segm"}
    with open(tmp_path / "eval" / "coco_instances_results.json") as f:
        dets = json.load(f)
    assert dets and {d["category_id"] for d in dets} <= {1, 3}


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_stock_checkpoint_initialises_language_aware_model(suffix, tmp_path, caplog):
    """A stock Faster R-CNN checkpoint fills the backbone, RPN and box head; the language-aware
    predictor and the text encoder keep their initialisation, and the log says so."""
    stock_cfg = _shrink(_stock_cfg(FASTER))
    torch.manual_seed(1)
    sd = build_model(stock_cfg).state_dict()
    path = str(tmp_path / f"stock{suffix}")
    if suffix == ".pth":
        torch.save({"model": sd}, path)
    else:  # model-zoo format: numpy arrays
        with open(path, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in sd.items()},
                         "__author__": "Detectron2 Model Zoo"}, f)
    torch.manual_seed(2)
    model = build_model(_language_aware(FASTER))
    text_before = {k: v.clone() for k, v in model.language_backbone.state_dict().items()}
    with caplog.at_level(logging.INFO):
        GLIPCheckpointer(model, partial_init_ok=True).load(path)
    own = model.state_dict()
    loaded = [k for k in sd if k in own and torch.equal(own[k], sd[k])]
    assert set(loaded) == {
        k for k in sd if not k.startswith("roi_heads.box_predictor.")
    }
    for k, v in model.language_backbone.state_dict().items():
        assert torch.equal(v, text_before[k])
    log = caplog.text
    assert "Checkpoint covers" in log
    assert "roi_heads.box_predictor.bbox_pred" in log  # skipped: (320, 1024) vs (4, 1024)
    assert "roi_heads.box_predictor.cls_score" in log  # not used by the model
    # for inference (no partial initialisation) the random predictor is refused
    with pytest.raises(ValueError, match="bbox_pred"):
        GLIPCheckpointer(build_model(_language_aware(FASTER))).load(path)


def test_precomputed_proposals_config_without_proposals_is_a_clear_error(coco_dataset):
    """A stock Fast R-CNN config (MODEL.LOAD_PROPOSALS) made language-aware: glip_d2's mapper
    does not load proposal files, so inputs come without 'proposals'."""
    cfg = _language_aware("COCO-Detection/fast_rcnn_R_50_FPN_1x.yaml")
    assert cfg.MODEL.LOAD_PROPOSALS
    model = build_model(cfg).train()
    mapper = GroundingDatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get(coco_dataset)[:1]]
    with EventStorage(0), pytest.raises(ValueError, match="LOAD_PROPOSALS.*'proposals'"):
        model(batch)
    model.eval()
    model.set_vocabulary(["red square"])
    with torch.no_grad(), pytest.raises(ValueError, match="LOAD_PROPOSALS.*'proposals'"):
        model([{"image": batch[0]["image"]}])


def test_c4_config_without_box_head_is_a_clear_error():
    """Detectron2's C4 configs have no ROI_BOX_HEAD.NAME (Res5ROIHeads); with a box head set,
    the language-aware heads run on res4."""
    cfg = _language_aware("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml")
    with pytest.raises(ValueError, match="ROI_BOX_HEAD.NAME is empty"):
        build_model(cfg)
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    model = build_model(cfg).eval()
    model.set_vocabulary(["red square", "blue square"])
    with torch.no_grad():
        inst = model([{"image": torch.zeros(3, 96, 128, dtype=torch.uint8)}])[0]["instances"]
    assert inst.image_size == (96, 128) and set(inst.pred_classes.tolist()) <= {0, 1}
