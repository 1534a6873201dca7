"""Evaluator choice by dataset metadata, and per-dataset test vocabularies."""
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, LVISEvaluator


def build_glip_evaluator(cfg, dataset_name: str, output_folder=None):
    """COCOEvaluator / LVISEvaluator chosen by the dataset's `evaluator_type`."""
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
    if kind == "coco":
        return COCOEvaluator(dataset_name, output_dir=output_folder,
                             max_dets_per_image=cfg.MODEL.ATSS.DETECTIONS_PER_IMG)
    if kind == "lvis":
        return LVISEvaluator(dataset_name, output_dir=output_folder,
                             max_dets_per_image=cfg.MODEL.ATSS.DETECTIONS_PER_IMG)
    raise NotImplementedError(
        f"No evaluator for dataset {dataset_name!r} with evaluator_type {kind!r}; "
        "GLIP evaluates COCO- and LVIS-style detection datasets."
    )


def set_test_vocabulary(model, dataset_name: str):
    """Detect the dataset's own class names (unless MODEL.GLIP.VOCABULARY fixes one)."""
    names = MetadataCatalog.get(dataset_name).get("thing_classes", None)
    if names is None:
        raise ValueError(f"Dataset {dataset_name!r} has no thing_classes to build a prompt from")
    getattr(model, "module", model).set_vocabulary(names)
