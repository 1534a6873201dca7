"""Registering grounding (MDETR-style) and detection datasets for GLIP training.

Both register lazily: the json is parsed when ``DatasetCatalog.get(name)`` is first called.
Neither replaces a registration; Detectron2's builtin names (``coco_2017_train``,
``lvis_v1_val``, ...) are already registered and stay as they are.
"""

import json
import logging
import os
from collections import defaultdict
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from ..text import clean_name, validate_spans

__all__ = [
    "load_grounding_json",
    "register_grounding_instances",
    "register_detection_as_grounding",
]

logger = logging.getLogger(__name__)

# Image-level fields of MDETR jsons carried into the dataset dicts when present.
_IMAGE_EXTRA_KEYS = ("tokens_positive_eval", "sentence_id", "original_img_id")


def _refuse_existing(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"A dataset name must be a non-empty string, got {name!r}.")
    if name in DatasetCatalog.list():
        raise ValueError(
            f"Dataset {name!r} is already registered; glip_d2 never replaces a registration "
            "(Detectron2's builtin names included). Register under another name, or "
            "DatasetCatalog.remove(name) first if you own the old one."
        )


def load_grounding_json(json_file: str, image_root: str) -> List[dict]:
    """Load an MDETR-style COCO json into Detectron2 dicts with grounding fields.

    Images carry ``"caption"``; annotations carry ``"tokens_positive"`` (``[[start, end], ...]``
    character spans into the caption) and optionally ``"phrase_ids"``.

    Args:
        json_file: path to the json.
        image_root: directory that the images' ``file_name`` are relative to.

    Returns:
        One dict per image: ``file_name``, ``height``, ``width``, ``image_id``, ``caption``
        (plus MDETR extras such as ``tokens_positive_eval`` when present) and ``annotations``
        with ``bbox`` (XYWH_ABS), ``bbox_mode``, ``category_id`` (as in the json, 0 if absent),
        ``iscrowd``, ``tokens_positive`` and, when present, ``phrase_id``.

    Raises:
        ValueError: if an image has no caption or a span lies outside its caption.
    """
    with PathManager.open(json_file) as f:
        data = json.load(f)
    annos_per_image: Dict[object, list] = defaultdict(list)
    for anno in data.get("annotations", []):
        annos_per_image[anno["image_id"]].append(anno)

    dicts = []
    for image in data["images"]:
        image_id = image["id"]
        caption = image.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(
                f"Image {image_id!r} in {json_file} has no caption; grounding jsons need an image "
                "'caption' (use register_detection_as_grounding for detection data)."
            )
        record = {
            "file_name": os.path.join(image_root, image["file_name"]),
            "height": image["height"],
            "width": image["width"],
            "image_id": image_id,
            "caption": caption,
        }
        record.update({k: image[k] for k in _IMAGE_EXTRA_KEYS if k in image})
        objs = []
        for anno in annos_per_image.get(image_id, []):
            spans = validate_spans(caption, anno.get("tokens_positive") or [], image_id)
            obj = {
                "bbox": anno["bbox"],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": anno.get("category_id", 0),
                "iscrowd": anno.get("iscrowd", 0),
                "tokens_positive": [list(s) for s in spans],
            }
            phrase_id = anno.get("phrase_ids", anno.get("phrase_id"))
            if phrase_id is not None:
                obj["phrase_id"] = phrase_id
            objs.append(obj)
        record["annotations"] = objs
        dicts.append(record)
    logger.info(f"Loaded {len(dicts)} grounding images from {json_file}.")
    return dicts


def register_grounding_instances(
    name: str, json_file: str, image_root: str, metadata: Optional[dict] = None
) -> None:
    """Register an MDETR-style grounding json (Flickr30k entities, GoldG, RefCOCO, ...).

    Args:
        name: the new dataset name.
        json_file: path to the json (see :func:`load_grounding_json`).
        image_root: directory of the images.
        metadata: extra metadata; ``evaluator_type`` defaults to "grounding" (categories of such
            jsons carry no meaning).

    Raises:
        ValueError: if ``name`` is already registered.
    """
    _refuse_existing(name)
    DatasetCatalog.register(name, lambda: load_grounding_json(json_file, image_root))
    meta = {"evaluator_type": "grounding", **(metadata or {})}
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, **meta)


def _json_thing_classes(json_file: str):
    with PathManager.open(json_file) as f:
        categories = sorted(json.load(f)["categories"], key=lambda c: c["id"])
    return [c["name"] for c in categories], {c["id"]: i for i, c in enumerate(categories)}


def _load_tagged(json_file: str, image_root: str, name: str) -> List[dict]:
    dicts = load_coco_json(json_file, image_root, name)
    for record in dicts:
        # Lets GroundingDatasetMapper pick this dataset's category names when datasets are mixed.
        record["dataset_name"] = name
    return dicts


def register_detection_as_grounding(
    name: str, metadata: dict, json_file: str, image_root: str
) -> None:
    """Register a COCO-format detection json for GLIP, which prompts with its category names.

    Like Detectron2's ``register_coco_instances`` (same loader and metadata, evaluator "coco"),
    and additionally:

    * ``thing_classes`` (and ``thing_dataset_id_to_contiguous_id``) are recorded at
      registration, read from the json's categories unless ``metadata`` gives them, so a model
      can build its vocabulary before the dataset is loaded; ``thing_classes_clean`` holds the
      names as they appear in prompts (:func:`~glip_d2.text.clean_name`);
    * each dict is tagged with ``"dataset_name"`` so the mapper uses this dataset's names.

    Args:
        name: the new dataset name.
        metadata: extra metadata (may be empty); pass ``thing_classes`` to skip reading the
            json at registration (large jsons such as Objects365).
        json_file: path to the COCO json.
        image_root: directory of the images.

    Raises:
        ValueError: if ``name`` is already registered.
    """
    _refuse_existing(name)
    metadata = dict(metadata or {})
    if "thing_classes" not in metadata:
        classes, id_map = _json_thing_classes(json_file)
        metadata["thing_classes"] = classes
        metadata.setdefault("thing_dataset_id_to_contiguous_id", id_map)
    metadata.setdefault("thing_classes_clean", [clean_name(c) for c in metadata["thing_classes"]])
    DatasetCatalog.register(name, lambda: _load_tagged(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
    )
