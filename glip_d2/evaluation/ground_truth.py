"""What COCO and LVIS evaluation need of a ground-truth json beyond what loading it needs.

The dataset loaders read a detection json without ``area``, without annotation ids, and (LVIS
format) without ``frequency`` or the per-image federated lists: training needs none of them.
pycocotools and the LVIS API do, and failed with a bare ``KeyError`` when the evaluator was built
or, worse, after the whole inference. These checks run when the evaluator is built, before
any image is read, and name the file, the record and what to add; ``train_net.py`` also runs them
on every test set before the model is built (:func:`check_ground_truth_file`), as an evaluator
is built only after the training, or after the inference of the test sets before its own.
"""

import json
import math
import numbers
from typing import Callable, TypeVar

from detectron2.utils.file_io import PathManager

__all__ = [
    "check_annotation_ids",
    "check_coco_ground_truth",
    "check_ground_truth_file",
    "check_lvis_ground_truth",
    "with_annotation_ids",
]

T = TypeVar("T")

# LVIS's frequency groups (rare, common, frequent), as lvis.LVISEval reads them.
_FREQUENCIES = ("r", "c", "f")
_FEDERATED_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")


def with_annotation_ids(build: Callable[[], T], json_file: str) -> T:
    """``build()`` (an evaluator whose API indexes ``json_file``'s annotations by id), with a
    clear error for an annotation without ``"id"`` instead of pycocotools' / the LVIS API's
    ``KeyError: 'id'``.

    Raises:
        ValueError: naming the file and the first annotation without an id.
    """
    try:
        return build()
    except KeyError as e:
        if e.args != ("id",) or not json_file:
            raise
        with PathManager.open(json_file, encoding="utf-8") as f:
            annotations = json.load(f).get("annotations") or []
        try:
            check_annotation_ids(annotations, json_file)
        except ValueError as missing:
            raise missing from e
        raise


def check_annotation_ids(annotations, json_file: str) -> None:
    """Every annotation has the ``"id"`` by which pycocotools and the LVIS API index it.

    Raises:
        ValueError: naming the file and the first annotation without an id.
    """
    index = next((i for i, a in enumerate(annotations) if "id" not in a), None)
    if index is not None:
        raise ValueError(
            f"{json_file}: annotation #{index} has no 'id', which COCO / LVIS evaluation needs "
            "to index the ground truth; give every annotation a unique integer 'id'."
        )


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_areas(annotations, json_file: str) -> None:
    for i, anno in enumerate(annotations):
        if "area" not in anno or not _is_number(anno["area"]):
            found = f"'area' {anno['area']!r}, not a number" if "area" in anno else "no 'area'"
            raise ValueError(
                f"{json_file}: annotation #{i} (id {anno.get('id')!r}) has {found}; COCO / LVIS "
                "AP need it (APs/APm/APl, and AP itself, are computed over area ranges). Add it to "
                "every annotation: the mask's area for segmentations, else the box's width x "
                "height."
            )


def check_coco_ground_truth(dataset: dict, json_file: str) -> None:
    """Check a COCO json's ground truth (``COCO(...).dataset``) for COCOeval, in place: every
    annotation needs a numeric ``area``; a missing ``iscrowd`` is read as 0, as the dataset loader
    (and Detectron2's) reads it.

    Raises:
        ValueError: naming the file and the first annotation without a numeric area.
    """
    annotations = dataset.get("annotations") or []
    _check_areas(annotations, json_file)
    for anno in annotations:
        anno.setdefault("iscrowd", 0)


def check_lvis_ground_truth(dataset: dict, json_file: str) -> None:
    """Check an LVIS json's ground truth (``LVIS(...).dataset``) for the LVIS API: annotations
    with a numeric ``area``, categories with a ``frequency`` ("r", "c" or "f"), images with
    ``neg_category_ids`` and ``not_exhaustive_category_ids`` lists.

    The lists are not defaulted to empty: LVIS scores a class on an image only where the image
    has it or lists it as negative, so without them every false positive of an absent class
    would be ignored and AP silently inflated.

    Raises:
        ValueError: naming the file, the record and what to add.
    """
    for i, cat in enumerate(dataset.get("categories") or []):
        if cat.get("frequency") not in _FREQUENCIES:
            found = (f"'frequency' {cat['frequency']!r}" if "frequency" in cat
                     else "no 'frequency'")
            raise ValueError(
                f"{json_file}: category #{i} (id {cat.get('id')!r}, {cat.get('name')!r}) has "
                f"{found}; LVIS evaluation groups the categories by it (APr, APc, APf). Set it "
                "to 'r' (rare: 1-10 training images), 'c' (common: 11-100) or 'f' (frequent: "
                "more) on every category, e.g. 'f' on all when the groups mean nothing for "
                "your data."
            )
    for i, image in enumerate(dataset.get("images") or []):
        for key in _FEDERATED_KEYS:
            if not isinstance(image.get(key), list):
                found = f"{key!r} {image[key]!r}, not a list" if key in image else f"no {key!r}"
                raise ValueError(
                    f"{json_file}: image #{i} (id {image.get('id')!r}) has {found}. LVIS "
                    "evaluation scores a category on an image only where the image has it or "
                    "lists it in 'neg_category_ids' (surely absent); 'not_exhaustive_category_ids' "
                    "lists those whose unmatched detections are ignored. Give every image both "
                    "lists of category ids ([] when none), or register the json in COCO format "
                    "(every category exhaustively annotated on every image)."
                )
    _check_areas(dataset.get("annotations") or [], json_file)


def check_ground_truth_file(json_file: str, evaluator: str) -> None:
    """Read ``json_file`` and check it as the ``evaluator`` ("coco" or "lvis") built on it will:
    annotation ids, then :func:`check_coco_ground_truth` / :func:`check_lvis_ground_truth`.

    ``train_net.py`` runs this on the test sets before the model is built: the evaluators check
    their json only when they are built, which is after the whole training when
    ``TEST.EVAL_PERIOD`` is 0, and, with several test sets, after the inference of those before.

    Raises:
        ValueError: naming the file and the record, as the evaluator would.
    """
    from ..data.datasets._utils import read_json  # names a file that is not json

    dataset = read_json(json_file, PathManager.open)
    if not isinstance(dataset, dict):
        raise ValueError(f"{json_file} is not a COCO / LVIS json (a mapping with 'images', "
                         f"'annotations' and 'categories'); it holds a {type(dataset).__name__}.")
    check_annotation_ids(dataset.get("annotations") or [], json_file)
    if evaluator == "lvis":
        check_lvis_ground_truth(dataset, json_file)
    else:
        check_coco_ground_truth(dataset, json_file)
