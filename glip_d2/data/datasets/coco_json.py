"""COCO-format detection jsons as GLIP data: validated parsing, Detectron2 dicts, registration.

Shared by every detection family (Objects365, LVIS, ODinW, custom jsons). A json is parsed once
into compact columns (numpy arrays for the boxes, so the parse cache of a 25M-box Objects365
file stays small), validated with messages that name the bad record, and turned into
Detectron2 dicts only when ``DatasetCatalog.get`` asks. Registration opens no image and, unless
asked to read the category names eagerly, not even the json.
"""

import functools
import itertools
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from ._utils import (
    DatasetFormatError,
    cached_parse,
    check_box,
    check_int,
    check_new_name,
    describe,
    read_json,
)

# Maps a dataset's category names (in id order) to the names GLIP prompts with.
Rename = Callable[[List[str]], List[str]]

__all__ = [
    "parse_detection_json",
    "category_metadata",
    "detection_dicts",
    "load_detection_json",
    "register_detection_json",
]

logger = logging.getLogger(__name__)


def _require(record: dict, keys: Sequence[str], where: str) -> None:
    if not isinstance(record, dict):
        raise DatasetFormatError(f"{where} is not a json object: {record!r}.")
    missing = [k for k in keys if k not in record]
    if missing:
        raise DatasetFormatError(f"{where} lacks {missing} (it has {sorted(record)}).")


def _anno_where(json_file: str, index: int, anno) -> str:
    anno_id = anno.get("id") if isinstance(anno, dict) else None
    return f"{json_file}: annotation #{index} (id {anno_id!r})"


def _unique_ids_required(json_file: str) -> bool:
    # As Detectron2's load_coco_json: COCO 2014's (valminus)minival jsons repeat a few ids.
    return "minival" not in json_file


def _check_annotation(anno, where: str, image_index: dict, categories: dict) -> None:
    """Everything :func:`_annotation_columns` checks, for one annotation, with a message."""
    _require(anno, ("image_id", "bbox", "category_id"), where)
    try:
        known_image = anno["image_id"] in image_index
    except TypeError:  # unhashable
        known_image = False
    if not known_image:
        raise DatasetFormatError(
            f"{where} refers to image_id {anno['image_id']!r}, which is not in 'images'."
        )
    category_id = check_int(anno["category_id"], "category_id", where)
    if category_id not in categories:
        raise DatasetFormatError(
            f"{where} has category_id {category_id}, which is not among the json's categories "
            f"{describe(sorted(categories))}."
        )
    check_box(anno["bbox"], where)
    check_int(anno.get("iscrowd", 0), "iscrowd", where, choices=(0, 1))
    if anno.get("ignore", 0) != 0:
        raise DatasetFormatError(
            f"{where} has \"ignore\": {anno['ignore']!r}, which Detectron2 does not support "
            "(its load_coco_json refuses it too); remove the annotation, or mark the region "
            '"iscrowd": 1.'
        )
    if "id" in anno:
        check_int(anno["id"], "id", where)


def _raise_first_bad_annotation(
    json_file: str, annos: list, image_index: dict, categories: dict
) -> None:
    seen: Dict[int, int] = {}
    for i, anno in enumerate(annos):
        where = _anno_where(json_file, i, anno)
        _check_annotation(anno, where, image_index, categories)
        if "id" in anno and _unique_ids_required(json_file):
            first = seen.setdefault(anno["id"], i)
            if first != i:
                raise DatasetFormatError(
                    f"{where}: annotation id {anno['id']} is also the id of annotation #{first}; "
                    "annotation ids must be unique (Detectron2's load_coco_json refuses repeated "
                    "ids too). Renumber the annotations."
                )
    raise DatasetFormatError(f"{json_file}: the annotations are malformed.")  # pragma: no cover


def _types_are(values, allowed) -> bool:
    # One pass in C over a whole column; exact types, so bool (an int subclass) is not an int.
    return set(map(type, values)) <= allowed


def _all_integers(values) -> bool:
    """Every value an int or an integral float (512.0), as :func:`check_int` accepts."""
    types = set(map(type, values))
    if types <= {int}:
        return True
    return types <= {int, float} and all(v.is_integer() for v in values if type(v) is float)


_NO_ID = object()


def _has_repeats(ids: list) -> bool:
    """Whether a list of integers (ints or integral floats) holds a value twice.

    Sorted as int64 when the values fit: a Python set of Objects365's 25M annotation ids took
    about 1 GB at once, the array takes 200 MB (8 bytes an id)."""
    if set(map(type, ids)) <= {int}:
        try:
            values = np.fromiter(ids, np.int64, len(ids))
        except OverflowError:  # an id beyond int64: compared as Python ints below
            pass
        else:
            values.sort()
            return bool((values[1:] == values[:-1]).any())
    return len(set(ids)) < len(ids)


def _annotation_columns(json_file: str, annos: list, image_index: dict, categories: dict):
    """``(image index, boxes, category ids, iscrowd)`` columns when every annotation is
    well-formed, else None (then :func:`_raise_first_bad_annotation` names the first bad one).

    The checks run over whole columns (types, then numpy), so that a 25M-annotation
    Objects365 json costs little more than reading it; they are exactly those of
    :func:`_check_annotation`.
    """
    n = len(annos)
    try:
        img_idx = np.fromiter((image_index[a["image_id"]] for a in annos), np.int64, n)
        cat_list = [a["category_id"] for a in annos]
        box_list = [a["bbox"] for a in annos]
        crowd_list = [a.get("iscrowd", 0) for a in annos]
        ignored = any(a.get("ignore", 0) != 0 for a in annos)
        ids = [a.get("id", _NO_ID) for a in annos]
    except (KeyError, TypeError, AttributeError):  # a missing key, an unhashable image_id, ...
        return None
    if ignored or not _all_integers(cat_list) or not _all_integers(crowd_list):
        return None
    if not _types_are(box_list, {list}) or not set(map(len, box_list)) <= {4}:
        return None
    if not _types_are(itertools.chain.from_iterable(box_list), {int, float}):
        return None
    if not set(crowd_list) <= {0, 1}:
        return None
    ids = [i for i in ids if i is not _NO_ID]
    if not _all_integers(ids) or (_unique_ids_required(json_file) and _has_repeats(ids)):
        return None
    try:
        cat_ids = np.asarray(cat_list, dtype=np.int64).reshape(n)
        boxes = np.asarray(box_list, dtype=np.float64).reshape(n, 4)
    except OverflowError:  # an integer beyond int64 / float64
        return None
    if not np.isfinite(boxes).all() or (boxes[:, 2:] < 0).any():
        return None
    if not np.isin(cat_ids, np.fromiter(categories, np.int64, len(categories))).all():
        return None
    return img_idx, boxes, cat_ids, np.asarray(crowd_list, dtype=np.uint8).reshape(n)


def _check_size(image: dict, where: str) -> None:
    for key in ("height", "width"):
        check_int(image[key], key, where)


def parse_detection_json(json_file: str, image_extra_keys: Sequence[str] = ()) -> dict:
    """Parse and validate a COCO-format detection json into columns.

    Args:
        json_file: the json (``images``, ``annotations``, ``categories``).
        image_extra_keys: image fields to keep (e.g. LVIS ``neg_category_ids``).

    Returns:
        dict with ``categories`` (``[(id, name)]`` sorted by id), ``image_ids``,
        ``file_names``, ``coco_urls`` (None where absent), ``heights``, ``widths``,
        ``image_extra`` (key -> list), and per annotation ``ann_image_index`` (int64),
        ``ann_boxes`` (float32 ``(N, 4)`` XYWH), ``ann_category_ids`` (int64, json ids),
        ``ann_iscrowd`` (uint8), and ``ann_segmentations`` ({annotation index: polygons or
        RLE} for the annotations that have a segmentation).

    Raises:
        DatasetFormatError: naming the first bad record: a missing key, a duplicate id (for
            annotations, unless the file name contains "minival", as in Detectron2), an
            annotation of an unknown image or category, a malformed or negative-size box, an
            id, category_id, height or width that is not an integer (floats, strings and
            booleans are not converted), an iscrowd other than 0 / 1, ``"ignore"`` set, or a
            segmentation that is neither a list of polygons nor an RLE of its image's size.
    """
    data = read_json(json_file, PathManager.open)
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise DatasetFormatError(
            f"{json_file} is not a COCO detection json: it needs 'images' and 'categories' "
            "(and 'annotations')."
        )

    categories = {}
    for i, cat in enumerate(data["categories"]):
        where = f"{json_file}: category #{i}"
        _require(cat, ("id", "name"), where)
        bad_id = isinstance(cat["id"], bool) or not isinstance(cat["id"], int)
        if bad_id or not isinstance(cat["name"], str):
            raise DatasetFormatError(f"{where}: id must be an int and name a string, got {cat}.")
        if cat["id"] in categories:
            raise DatasetFormatError(f"{where}: category id {cat['id']} appears twice.")
        categories[cat["id"]] = cat["name"]

    image_index: Dict[object, int] = {}
    file_names, coco_urls, heights, widths = [], [], [], []
    extra: Dict[str, list] = {k: [] for k in image_extra_keys}
    for i, image in enumerate(data["images"]):
        image_id = image.get("id") if isinstance(image, dict) else None
        where = f"{json_file}: image #{i} (id {image_id!r})"
        _require(image, ("id", "height", "width"), where)
        if "file_name" not in image and "coco_url" not in image:
            raise DatasetFormatError(f"{where} has neither 'file_name' nor 'coco_url'.")
        image_id = check_int(image["id"], "id", where)
        _check_size(image, where)
        if image_id in image_index:
            raise DatasetFormatError(f"{where}: image id {image['id']!r} appears twice.")
        image_index[image_id] = i
        file_names.append(image.get("file_name"))
        coco_urls.append(image.get("coco_url"))
        heights.append(image["height"])
        widths.append(image["width"])
        for k in image_extra_keys:
            extra[k].append(image.get(k))

    annos = data.get("annotations") or []
    columns = _annotation_columns(json_file, annos, image_index, categories)
    if columns is None:
        _raise_first_bad_annotation(json_file, annos, image_index, categories)
    img_idx, boxes, cat_ids, iscrowd = columns
    segmentations = {}
    for i, anno in enumerate(annos):
        if anno.get("segmentation"):
            k = int(img_idx[i])
            _check_segmentation(
                anno["segmentation"],
                lambda: _anno_where(json_file, i, anno),
                [int(heights[k]), int(widths[k])],
            )
            segmentations[i] = anno["segmentation"]
    return {
        "categories": sorted(categories.items()),
        "image_ids": list(image_index),
        "file_names": file_names,
        "coco_urls": coco_urls,
        "heights": np.asarray(heights, dtype=np.int32),
        "widths": np.asarray(widths, dtype=np.int32),
        "image_extra": extra,
        "ann_image_index": img_idx,
        "ann_boxes": boxes.astype(np.float32),
        "ann_category_ids": cat_ids,
        "ann_iscrowd": iscrowd,
        # Only the annotations that have one (box-only jsons such as Objects365 store nothing).
        "ann_segmentations": segmentations,
    }


def _check_segmentation(segm, where: Callable[[], str], image_size: List[int]) -> None:
    """A segmentation must be COCO's: a list of polygons (each a flat list of numbers) or an RLE
    ``{"size": [h, w], "counts": ...}`` of its image's ``image_size`` ``[height, width]``.
    Anything else is refused rather than read: a single flat polygon (``[x1, y1, x2, y2, ...]``,
    a common export mistake) would otherwise count as "no valid polygon" and its annotation, box
    included, would be dropped; an RLE of another size failed in the mapper with a bare
    AssertionError (or, flipped only, became a mask of the wrong size)."""
    if isinstance(segm, dict):
        size = segm.get("size")
        if (
            isinstance(segm.get("counts"), (list, str))
            and isinstance(size, list)
            and len(size) == 2
            and _types_are(size, {int})
        ):
            if size != image_size:
                raise DatasetFormatError(
                    f"{where()}: segmentation is an RLE of size {size}, but its image is "
                    f"[height, width] = {image_size}; fix the RLE or the image's size."
                )
            return
        raise DatasetFormatError(
            f"{where()}: segmentation {_short(segm)} is not an RLE "
            '{"size": [height, width], "counts": [...] or "..."}; fix or remove it.'
        )
    if isinstance(segm, list) and _types_are(segm, {list}):
        if _types_are(itertools.chain.from_iterable(segm), {int, float}):
            return
    elif isinstance(segm, list) and _types_are(segm, {int, float}):
        raise DatasetFormatError(
            f"{where()}: segmentation {_short(segm)} is one flat list of coordinates; COCO "
            "polygons are a list of polygons: write it as [[x1, y1, x2, y2, ...]]."
        )
    raise DatasetFormatError(
        f"{where()}: segmentation {_short(segm)} is neither a list of polygons (flat lists of "
        'numbers) nor an RLE {"size": [height, width], "counts": ...}; fix or remove it.'
    )


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def category_metadata(
    categories: Sequence, rename: Optional[Rename] = None, skip_ids: Sequence[int] = ()
) -> dict:
    """``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` from ``[(id, name)]``.

    Args:
        categories: ``(id, name)`` pairs.
        rename: maps the json's names (in id order) to the names used as prompts; the json's
            names are then kept in ``thing_classes_raw``.
        skip_ids: categories left out (e.g. the background entry of raw Roboflow exports).
    """
    kept = sorted((int(i), n) for i, n in categories if int(i) not in set(skip_ids))
    raw = [n for _, n in kept]
    meta = {
        "thing_classes": list(rename(raw)) if rename else raw,
        "thing_dataset_id_to_contiguous_id": {i: k for k, (i, _) in enumerate(kept)},
    }
    if rename is not None:
        meta["thing_classes_raw"] = raw
    return meta


def _join(image_root: str, file_name: str) -> str:
    return os.path.join(image_root, file_name)


def detection_dicts(
    parsed: dict,
    image_root: str,
    id_map: Dict[int, int],
    dataset_name: Optional[str] = None,
    file_name_fn: Optional[Callable[[str, Optional[str], Optional[str]], str]] = None,
    where: str = "",
) -> List[dict]:
    """Detectron2 dicts from :func:`parse_detection_json` columns.

    Args:
        parsed: the columns.
        image_root: the folder images are relative to.
        id_map: json category id -> contiguous id; annotations of other ids raise.
        dataset_name: stored in each dict as "dataset_name" (the mapper takes that dataset's
            thing_classes for its prompts).
        file_name_fn: ``(image_root, file_name, coco_url) -> path``; default joins the two.
        where: the source file, for error messages.
    """
    cat_ids = parsed["ann_category_ids"]
    known = np.isin(cat_ids, np.fromiter(id_map, np.int64, len(id_map)))
    if not known.all():
        i = int(np.flatnonzero(~known)[0])
        raise DatasetFormatError(
            f"{where}: annotation #{i} has category_id {int(cat_ids[i])}, which is not in the "
            f"registered categories {describe(sorted(id_map))}."
        )
    contiguous = np.fromiter((id_map[int(c)] for c in cat_ids), np.int64, len(cat_ids))
    order = np.argsort(parsed["ann_image_index"], kind="stable")
    bounds = np.searchsorted(
        parsed["ann_image_index"][order], np.arange(len(parsed["image_ids"]) + 1)
    )
    boxes = parsed["ann_boxes"][order].tolist()
    contiguous = contiguous[order].tolist()
    iscrowd = parsed["ann_iscrowd"][order].tolist()
    segmentations = parsed.get("ann_segmentations") or {}
    order = order.tolist()
    extra = parsed["image_extra"]
    if file_name_fn is None:

        def join(root, name, url):
            if name is None:  # the parse lets coco_url stand in for LVIS-format jsons only
                raise DatasetFormatError(
                    f"{where}: image #{i} (id {image_id!r}) has no 'file_name' (only a "
                    f"'coco_url' {url!r}); add its file name relative to the image root, or "
                    "register the json as LVIS format (register_custom_lvis), which takes the "
                    "path from coco_url."
                )
            return _join(root, name)

    else:
        join = file_name_fn
    dicts, dropped = [], 0
    for i, image_id in enumerate(parsed["image_ids"]):
        record = {
            "file_name": join(image_root, parsed["file_names"][i], parsed["coco_urls"][i]),
            "height": int(parsed["heights"][i]),
            "width": int(parsed["widths"][i]),
            "image_id": image_id,
        }
        for key, values in extra.items():
            if values[i] is not None:
                record[key] = values[i]
        record["annotations"] = []
        for j in range(bounds[i], bounds[i + 1]):
            anno = {
                "bbox": boxes[j],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": contiguous[j],
                "iscrowd": iscrowd[j],
            }
            if order[j] in segmentations:
                segm = _valid_segmentation(segmentations[order[j]])
                if segm is None:  # Detectron2's load_coco_json drops these instances too
                    dropped += 1
                    continue
                anno["segmentation"] = segm
            record["annotations"].append(anno)
        if dataset_name is not None:
            record["dataset_name"] = dataset_name
        dicts.append(record)
    if dropped:
        logger.warning(
            f"{where}: dropped {dropped} annotations whose segmentation has no valid polygon "
            "(each needs an even number >= 6 of coordinates), as Detectron2's load_coco_json does."
        )
    return dicts


def _valid_segmentation(segm):
    """Polygons with an even number >= 6 of coordinates (None if none is left), or an RLE
    (uncompressed counts are compressed, as Detectron2's load_coco_json does)."""
    if isinstance(segm, dict):
        if isinstance(segm.get("counts"), list):
            from pycocotools import mask as mask_util

            segm = mask_util.frPyObjects(segm, *segm["size"])
        return segm
    polygons = [p for p in segm if isinstance(p, list) and len(p) % 2 == 0 and len(p) >= 6]
    return polygons or None


_ARRAY_COLUMNS = (
    "heights",
    "widths",
    "ann_image_index",
    "ann_boxes",
    "ann_category_ids",
    "ann_iscrowd",
)
_LIST_COLUMNS = ("categories", "image_ids", "file_names", "coco_urls")


def _is_parse(obj) -> bool:
    """Whether a cached object has the shape :func:`parse_detection_json` returns."""
    return (
        isinstance(obj, dict)
        and all(isinstance(obj.get(k), np.ndarray) for k in _ARRAY_COLUMNS)
        and all(isinstance(obj.get(k), list) for k in _LIST_COLUMNS)
        and isinstance(obj.get("image_extra"), dict)
        and isinstance(obj.get("ann_segmentations"), dict)
        and obj["ann_boxes"].ndim == 2
        and obj["ann_boxes"].shape[1:] == (4,)
        and _is_categories(obj["categories"])
    )


def _is_categories(obj) -> bool:
    """Whether a cached object is a ``[(id, name)]`` list."""
    return isinstance(obj, list) and all(
        isinstance(c, (tuple, list))
        and len(c) == 2
        and isinstance(c[0], int)
        and isinstance(c[1], str)
        for c in obj
    )


def _parse_cached(json_file: str, image_extra_keys: Sequence[str] = ()) -> dict:
    # "-segm": parses cached before segmentations were kept are not reused.
    tag = "coco-det-segm" + "".join(f"-{k}" for k in image_extra_keys)
    parsed = cached_parse(
        json_file,
        tag,
        functools.partial(parse_detection_json, json_file, image_extra_keys),
        check=_is_parse,
    )
    # A small separate entry, so registration can read the names without the whole parse.
    cached_parse(json_file, "coco-categories", lambda: parsed["categories"], check=_is_categories)
    return parsed


def _cached_categories(json_file: str, image_extra_keys: Sequence[str], eager: bool):
    """The json's ``[(id, name)]``: from the cache, else (``eager``) by parsing, else None."""
    categories = cached_parse(json_file, "coco-categories", list, peek=True, check=_is_categories)
    if categories is None and eager:
        categories = _parse_cached(json_file, image_extra_keys)["categories"]
    return categories


def _fill_metadata(dataset_name: str, metadata: dict) -> None:
    """Set the keys a lazily registered dataset did not have yet (same values otherwise)."""
    meta = MetadataCatalog.get(dataset_name)
    missing = {k: v for k, v in metadata.items() if not hasattr(meta, k)}
    if missing:
        meta.set(**missing)


def _check_vocabulary(metadata: dict, dataset_name: str, json_file: str) -> None:
    """Every contiguous id of the id map must name a class: registered ``thing_classes``
    without an id map get the json's (its categories in id order), which fits only when there
    are as many names as the json has categories."""
    id_map = metadata["thing_dataset_id_to_contiguous_id"]
    classes = metadata.get("thing_classes") or []
    if id_map and max(id_map.values()) >= len(classes):
        raise DatasetFormatError(
            f"Dataset {dataset_name!r} was registered with {len(classes)} thing_classes, but "
            f"the category ids {describe(sorted(id_map))} of its json {json_file} map to "
            f"contiguous ids up to {max(id_map.values())}: give one name per json category "
            "(in id order), or a thing_dataset_id_to_contiguous_id that fits the names."
        )


def load_detection_json(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    *,
    rename: Optional[Rename] = None,
    skip_category_ids: Sequence[int] = (),
    file_name_fn=None,
    image_extra_keys: Sequence[str] = (),
) -> List[dict]:
    """Load a COCO-format detection json (parsed once, then cached) into Detectron2 dicts.

    Args:
        json_file: the json.
        image_root: folder of the images.
        dataset_name: when given, its metadata gets ``thing_classes`` and the id map if it
            does not have them yet, and each dict is tagged with "dataset_name".
        rename: see :func:`category_metadata`.
        skip_category_ids: categories left out of the vocabulary (an annotation of one raises).
        file_name_fn: see :func:`detection_dicts`.
        image_extra_keys: image fields to keep in the dicts.

    Returns:
        list of dicts with ``file_name``, ``height``, ``width``, ``image_id``, ``annotations``
        (``bbox`` XYWH_ABS, ``bbox_mode``, contiguous ``category_id``, ``iscrowd``).
    """
    parsed = _parse_cached(json_file, image_extra_keys)
    metadata = category_metadata(parsed["categories"], rename, skip_category_ids)
    if dataset_name is not None:
        _fill_metadata(dataset_name, metadata)
        # The registered vocabulary wins (e.g. LVIS v1's 1203 names for a json with fewer).
        metadata = MetadataCatalog.get(dataset_name).as_dict()
        _check_vocabulary(metadata, dataset_name, json_file)
    dicts = detection_dicts(
        parsed,
        image_root,
        metadata["thing_dataset_id_to_contiguous_id"],
        dataset_name,
        file_name_fn,
        where=json_file,
    )
    logger.info(f"Loaded {len(dicts)} images from {json_file}.")
    return dicts


def register_detection_json(
    name: str,
    json_file: str,
    image_root: str,
    *,
    metadata: Optional[dict] = None,
    evaluator_type: str = "coco",
    rename: Optional[Rename] = None,
    skip_category_ids: Sequence[int] = (),
    file_name_fn=None,
    image_extra_keys: Sequence[str] = (),
    eager: bool = True,
) -> None:
    """Register a COCO-format detection json; GLIP prompts with its category names.

    Args:
        name: the new dataset name.
        json_file: the json.
        image_root: folder of the images.
        metadata: extra metadata; ``thing_classes`` (with the id map) given here are used as is.
        evaluator_type: picks the evaluator in :func:`glip_d2.engine.build_glip_evaluator`.
        rename, skip_category_ids, file_name_fn, image_extra_keys: see
            :func:`load_detection_json`.
        eager: read the category names now (parses the json, and caches the parse, so the
            first load is free). Otherwise they come from the parse cache when it has them,
            else on first load (for multi-GB jsons).

    Raises:
        ValueError: if ``name`` is already registered.
    """
    check_new_name(name)
    meta = dict(metadata or {})
    if "thing_classes" not in meta:
        categories = _cached_categories(json_file, image_extra_keys, eager)
        if categories is not None:
            meta.update(category_metadata(categories, rename, skip_category_ids))
    DatasetCatalog.register(
        name,
        functools.partial(
            load_detection_json,
            json_file,
            image_root,
            name,
            rename=rename,
            skip_category_ids=tuple(skip_category_ids),
            file_name_fn=file_name_fn,
            image_extra_keys=tuple(image_extra_keys),
        ),
    )
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type=evaluator_type, **meta
    )
