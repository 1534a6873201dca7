"""MDETR's grounding annotations: GoldG, Flickr30k Entities, RefCOCO/+/g.

The jsons (``mdetr_annotations.tar.gz`` from MDETR's release, and GLIP's
``final_mixed_train_no_coco.json``) are COCO jsons with one "image" per (image, caption) pair:

* image: ``file_name``, ``height``, ``width``, ``id``, ``caption``; optionally
  ``tokens_positive_eval`` (per evaluated phrase, its character spans; Flickr), ``sentence_id``
  and ``original_img_id`` (Flickr), ``original_id`` (RefCOCO), ``tokens_negative``,
  ``data_source`` ("coco" or "vg": which image folder; GoldG), ``dataset_name``;
* annotation: ``image_id``, ``bbox`` (XYWH), ``tokens_positive`` (the spans of the caption
  that name the box), optionally ``phrase_ids``, ``category_id``, ``iscrowd``.

Dicts keep all of it: ``caption``, per annotation ``tokens_positive`` and ``phrase_id``, the
image fields above (MDETR's ``dataset_name`` becomes ``source_dataset``, since "dataset_name"
tags the registered dataset). Every span is checked to lie inside its caption.

Three *views* of the same json decide which phrases the model is asked about at test time
(``GroundingDatasetMapper`` numbers phrases by ``phrase_id`` in order of appearance):

* ``"train"``: annotations as in the json (training, GoldG);
* ``"phrases"``: one annotation per (box, evaluated phrase), ``phrase_id`` = the phrase's index
  in ``tokens_positive_eval`` and its spans as ``tokens_positive`` (Flickr30k evaluation: the
  model grounds exactly the phrases MDETR's protocol scores, in that order; sentences with no
  such phrase are left out, as MDETR's evaluator skips them);
* ``"refexp"``: every box is phrase 0 (the referred object); a box without spans gets the
  whole expression (RefCOCO evaluation).
"""

import functools
import logging
import os
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from ...text import validate_spans
from ._utils import (DatasetFormatError, cached_parse, check_box, check_int, check_new_name,
                     read_json)

__all__ = [
    "VIEWS",
    "parse_mdetr_json",
    "load_mdetr_json",
    "register_mdetr",
    "register_flickr30k",
    "register_refexp",
]

logger = logging.getLogger(__name__)

VIEWS = ("train", "phrases", "refexp")
_DEFAULT_EVALUATOR = {"train": "grounding", "phrases": "flickr", "refexp": "refcoco"}
# Image fields kept as they are.
_IMAGE_KEYS = (
    "tokens_positive_eval",
    "sentence_id",
    "original_img_id",
    "original_id",
    "tokens_negative",
    "data_source",
)


def _check_spans(caption: str, spans, where: str) -> List[List[int]]:
    if not isinstance(spans, (list, tuple)):
        raise DatasetFormatError(
            f"{where}: spans must be a list of [start, end] pairs, got {spans!r}."
        )
    try:
        return [list(s) for s in validate_spans(caption, spans)]
    except ValueError as error:
        raise DatasetFormatError(f"{where}: {error}") from None


def _missing(record, keys, where: str) -> None:
    if not isinstance(record, dict):
        raise DatasetFormatError(f"{where} is not a json object: {record!r}.")
    missing = [k for k in keys if k not in record]
    if missing:
        raise DatasetFormatError(f"{where} lacks {missing} (it has {sorted(record)}).")


def _size(value, what: str, where: str) -> int:
    """An image height or width as an int. 480.0 is 480, as in the COCO-format loader, and so is
    "480": MDETR's Flickr30k jsons (``final_flickr_*GT_*.json``, part of GoldG) carry the sizes of
    the Flickr30k Entities xml as strings. Anything else that is not an integer is refused."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    return check_int(value, what, where)


def parse_mdetr_json(json_file: str) -> List[dict]:
    """Parse and validate an MDETR json into dicts (``file_name`` not yet joined to a root).

    Raises:
        DatasetFormatError: naming the record, for a missing key, an empty caption, a duplicate
            image id, an annotation of an unknown image, a malformed or negative-size box, a
            span outside its caption, an iscrowd other than 0 / 1, or a phrase id, height or
            width that is not an integer (sizes may be strings of digits, as in MDETR's Flickr30k
            jsons).
    """
    data = read_json(json_file, PathManager.open)
    if not isinstance(data, dict) or "images" not in data:
        raise DatasetFormatError(f"{json_file} is not an MDETR json: it has no 'images'.")
    records: Dict[object, dict] = {}
    for i, image in enumerate(data["images"]):
        image_id = image.get("id") if isinstance(image, dict) else None
        where = f"{json_file}: image #{i} (id {image_id!r})"
        _missing(image, ("id", "file_name", "height", "width", "caption"), where)
        caption = image["caption"]
        if not isinstance(caption, str) or not caption.strip():
            raise DatasetFormatError(f"{where} has an empty caption {caption!r}.")
        if image_id in records:
            raise DatasetFormatError(f"{where}: image id {image_id!r} appears twice.")
        record = {
            "file_name": image["file_name"],
            "height": _size(image["height"], "height", where),
            "width": _size(image["width"], "width", where),
            "image_id": image_id,
            "caption": caption,
        }
        record.update({k: image[k] for k in _IMAGE_KEYS if k in image})
        if "tokens_positive_eval" in record:
            record["tokens_positive_eval"] = [
                _check_spans(caption, spans, f"{where}, tokens_positive_eval #{k}")
                for k, spans in enumerate(record["tokens_positive_eval"])
            ]
        if "dataset_name" in image:
            record["source_dataset"] = image["dataset_name"]
        record["annotations"] = []
        records[image_id] = record

    for i, anno in enumerate(data.get("annotations") or []):
        anno_id = anno.get("id") if isinstance(anno, dict) else None
        where = f"{json_file}: annotation #{i} (id {anno_id!r})"
        _missing(anno, ("image_id", "bbox", "tokens_positive"), where)
        record = records.get(anno["image_id"])
        if record is None:
            raise DatasetFormatError(
                f"{where} refers to image_id {anno['image_id']!r}, which is not in 'images'."
            )
        obj = {
            "bbox": check_box(anno["bbox"], where),
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": anno.get("category_id", 0),
            "iscrowd": check_int(anno.get("iscrowd", 0), "iscrowd", where, choices=(0, 1)),
            "tokens_positive": _check_spans(record["caption"], anno["tokens_positive"], where),
        }
        phrase_id = anno.get("phrase_ids", anno.get("phrase_id"))
        if phrase_id is not None:
            # One phrase per box: the mapper numbers phrases by this id.
            obj["phrase_id"] = check_int(phrase_id, "phrase_ids", where)
        record["annotations"].append(obj)
    return list(records.values())


def _phrases_view(record: dict, where: str) -> List[dict]:
    """One annotation per (box, evaluated phrase); phrase_id = index in tokens_positive_eval."""
    if "tokens_positive_eval" not in record:
        raise DatasetFormatError(
            f"{where}: image {record['image_id']!r} has no tokens_positive_eval, which the "
            "'phrases' view (Flickr30k evaluation) needs."
        )
    annos = []
    for k, spans in enumerate(record["tokens_positive_eval"]):
        wanted = {tuple(s) for s in spans}
        boxes = [
            a for a in record["annotations"] if wanted & {tuple(s) for s in a["tokens_positive"]}
        ]
        if not boxes:
            raise DatasetFormatError(
                f"{where}: image {record['image_id']!r}, evaluated phrase #{k} {spans} "
                f"({[record['caption'][s:e] for s, e in spans]}) names no box."
            )
        for a in boxes:
            annos.append({**a, "tokens_positive": [list(s) for s in spans], "phrase_id": k})
    return annos


def _refexp_view(record: dict) -> List[dict]:
    whole = [[0, len(record["caption"])]]
    return [
        {**a, "tokens_positive": a["tokens_positive"] or whole, "phrase_id": 0}
        for a in record["annotations"]
    ]


def _is_parse(obj) -> bool:
    """Whether a cached object has the shape :func:`parse_mdetr_json` returns."""
    return isinstance(obj, list) and all(
        isinstance(r, dict)
        and isinstance(r.get("caption"), str)
        and isinstance(r.get("annotations"), list)
        and "file_name" in r
        for r in obj
    )


def load_mdetr_json(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    *,
    view: str = "train",
    image_roots: Optional[Dict[str, str]] = None,
) -> List[dict]:
    """Load an MDETR json (parsed once, then cached) into Detectron2 dicts.

    Args:
        json_file: the json.
        image_root: folder of the images.
        dataset_name: stored in each dict as "dataset_name".
        view: "train", "phrases" or "refexp" (see the module docstring).
        image_roots: ``data_source`` -> folder, for images whose ``data_source`` is listed
            (GoldG: ``{"coco": "coco/train2014"}`` with ``image_root`` the GQA folder).

    Returns:
        list of dicts (see the module docstring).
    """
    if view not in VIEWS:
        raise ValueError(f"Unknown view {view!r}; expected one of {VIEWS}.")
    records = cached_parse(
        json_file, "mdetr", functools.partial(parse_mdetr_json, json_file), check=_is_parse
    )
    image_roots = image_roots or {}
    dicts = []
    for record in records:
        record = dict(record)
        root = image_roots.get(record.get("data_source"), image_root)
        record["file_name"] = os.path.join(root, record["file_name"])
        if view == "phrases":
            record["annotations"] = _phrases_view(record, json_file)
            if not record["annotations"]:
                continue  # no phrase of this sentence has a box: MDETR does not score it
        elif view == "refexp":
            record["annotations"] = _refexp_view(record)
        if dataset_name is not None:
            record["dataset_name"] = dataset_name
        dicts.append(record)
    logger.info(f"Loaded {len(dicts)} captions from {json_file} ({view} view).")
    return dicts


def register_mdetr(
    name: str,
    json_file: str,
    image_root: str,
    *,
    view: str = "train",
    image_roots: Optional[Dict[str, str]] = None,
    metadata: Optional[dict] = None,
) -> None:
    """Register an MDETR grounding json (lazily: nothing is read now).

    Args:
        name: the new dataset name.
        json_file, image_root, view, image_roots: see :func:`load_mdetr_json`.
        metadata: extra metadata; ``evaluator_type`` defaults to "grounding" (train view),
            "flickr" (phrases view) or "refcoco" (refexp view).
    """
    if view not in VIEWS:
        raise ValueError(f"Unknown view {view!r}; expected one of {VIEWS}.")
    check_new_name(name)
    DatasetCatalog.register(
        name,
        functools.partial(
            load_mdetr_json, json_file, image_root, name, view=view, image_roots=image_roots
        ),
    )
    meta = {"evaluator_type": _DEFAULT_EVALUATOR[view], "grounding_view": view}
    meta.update(metadata or {})
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, **meta)


def register_flickr30k(
    name: str,
    json_file: str,
    image_root: str,
    *,
    evaluation: bool = True,
    entities_dir: Optional[str] = None,
    metadata: Optional[dict] = None,
) -> None:
    """Register a ``final_flickr_{separate,merged}GT_<split>.json``.

    Args:
        name: the new dataset name.
        json_file: the json.
        image_root: folder of the Flickr30k images.
        evaluation: the "phrases" view with the Flickr30k evaluator; False = training view.
        entities_dir: Flickr30k Entities (``Annotations/*.xml``, ``Sentences/*.txt``); when
            given, recall follows MDETR's protocol exactly and is also reported per phrase type.
        metadata: extra metadata.
    """
    meta = {"flickr_entities_dir": entities_dir} if entities_dir else {}
    meta.update(metadata or {})
    register_mdetr(
        name, json_file, image_root, view="phrases" if evaluation else "train", metadata=meta
    )


def register_refexp(
    name: str,
    json_file: str,
    image_root: str,
    *,
    evaluation: bool = True,
    metadata: Optional[dict] = None,
) -> None:
    """Register a ``finetune_refcoco{,+,g}_<split>.json`` (images: COCO train2014).

    Args:
        name: the new dataset name.
        json_file: the json.
        image_root: ``coco/train2014``.
        evaluation: the "refexp" view with the RefCOCO evaluator; False = training view.
        metadata: extra metadata.
    """
    register_mdetr(
        name, json_file, image_root, view="refexp" if evaluation else "train", metadata=metadata
    )
