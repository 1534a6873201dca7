"""Registering grounding (MDETR-style) and detection datasets for GLIP training.

Both register lazily: the json is parsed when ``DatasetCatalog.get(name)`` is first called.
Neither replaces a registration; Detectron2's builtin names (``coco_2017_train``,
``lvis_v1_val``, ...) are already registered and stay as they are.
"""

import logging
from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..text import clean_name

__all__ = [
    "GROUNDING_EVALUATOR_TYPES",
    "ensure_class_metadata",
    "load_grounding_json",
    "register_grounding_instances",
    "register_detection_as_grounding",
]

logger = logging.getLogger(__name__)

# Datasets whose inputs carry their own caption: no vocabulary prompt.
GROUNDING_EVALUATOR_TYPES = ("flickr", "grounding", "refcoco")


def ensure_class_metadata(dataset_name: str) -> None:
    """Load a lazily registered dataset once, so its metadata has the category names and the
    id map (``register_coco_instances`` sets them when the json is first loaded; the evaluators
    map ``pred_classes`` back to dataset ids with the map). Grounding datasets have none."""
    meta = MetadataCatalog.get(dataset_name)
    kind = meta.get("evaluator_type", "coco")
    if kind in GROUNDING_EVALUATOR_TYPES:
        return
    needed = ["thing_classes"]
    if kind in ("coco", "odinw"):  # LVISEvaluator falls back to id = class + 1
        needed.append("thing_dataset_id_to_contiguous_id")
    if not all(hasattr(meta, k) for k in needed) and dataset_name in DatasetCatalog.list():
        DatasetCatalog.get(dataset_name)

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
    character spans into the caption) and optionally ``"phrase_ids"``. The file is parsed and
    validated by the one grounding validator, :func:`~glip_d2.data.datasets.mdetr.parse_mdetr_json`
    (the one ``register_mdetr`` uses): a negative-size, non-finite or malformed box, an
    annotation without ``tokens_positive``, a span outside its caption, an empty caption or a
    duplicate image id is a ``DatasetFormatError`` naming the file and the record, never a
    silently changed or dropped box.

    Args:
        json_file: path to the json.
        image_root: directory that the images' ``file_name`` are relative to.

    Returns:
        One dict per image: ``file_name``, ``height``, ``width``, ``image_id``, ``caption``
        (plus MDETR extras such as ``tokens_positive_eval`` when present) and ``annotations``
        with ``bbox`` (XYWH_ABS), ``bbox_mode``, ``category_id`` (as in the json, 0 if absent),
        ``iscrowd``, ``tokens_positive`` and, when present, ``phrase_id``.

    Raises:
        DatasetFormatError (a ValueError): naming the file and the record.
    """
    from .datasets.mdetr import load_mdetr_json

    dicts = load_mdetr_json(json_file, image_root, view="train")
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
    # Through the validating (and caching) parser of load_detection_json: a category without a
    # name or a repeated id is a DatasetFormatError naming the file, never a shifted id map.
    from .datasets.coco_json import _cached_categories, category_metadata

    meta = category_metadata(_cached_categories(json_file, (), eager=True))
    return meta["thing_classes"], meta["thing_dataset_id_to_contiguous_id"]


def _load_tagged(json_file: str, image_root: str, name: str) -> List[dict]:
    # Not Detectron2's load_coco_json(json_file, image_root, name): it sets thing_classes from
    # the json, which MetadataCatalog refuses when the registration gave other names. glip_d2's
    # loader keeps registered names, maps ids with the registered (else the json's) id map and
    # tags each dict with "dataset_name", so the mapper uses this dataset's names.
    from .datasets.coco_json import load_detection_json

    return load_detection_json(json_file, image_root, name)


def register_detection_as_grounding(
    name: str, metadata: dict, json_file: str, image_root: str
) -> None:
    """Register a COCO-format detection json for GLIP, which prompts with its category names.

    Like Detectron2's ``register_coco_instances`` (Detectron2 dicts, same metadata, evaluator
    "coco"),
    and additionally:

    * ``thing_classes`` (and ``thing_dataset_id_to_contiguous_id``) are recorded at
      registration, read from the json's categories unless ``metadata`` gives them (the json is
      then parsed and validated now, the parse cached for the load), so a model can build its
      vocabulary before the dataset is loaded; ``thing_classes_clean`` holds the
      names as they appear in prompts (:func:`~glip_d2.text.clean_name`). Names given without
      an id map are the json's categories in id order (one name each);
    * the json is loaded by :func:`~glip_d2.data.datasets.coco_json.load_detection_json`
      (validated, parse cached; keypoints are not kept) and each dict is tagged with
      ``"dataset_name"`` so the mapper uses this dataset's names.

    Args:
        name: the new dataset name.
        metadata: extra metadata (may be empty); pass ``thing_classes`` to skip reading the
            json at registration (large jsons such as Objects365).
        json_file: path to the COCO json.
        image_root: directory of the images.

    Raises:
        ValueError: if ``name`` is already registered, or (``DatasetFormatError``, naming the
            file and the record) the json read now is malformed.
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
