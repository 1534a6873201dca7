"""ODVG jsonl (Grounding DINO / Open-GroundingDino): read, register and write.

One json object per line, one line per image::

    {"filename": "a.jpg", "height": 480, "width": 640,
     "detection": {"instances": [{"bbox": [x1, y1, x2, y2], "label": 0, "category": "dog"}]}}
    {"filename": "b.jpg", "height": 480, "width": 640,
     "grounding": {"caption": "a dog on a sofa",
                   "regions": [{"bbox": [x1, y1, x2, y2], "phrase": "a dog",
                                "tokens_positive": [[0, 5]]}]}}

Boxes are absolute XYXY. Detection lines (``"od"`` is accepted for ``"detection"``) become
detection dicts (``category_id`` = ``label``, or with a label map whose keys are not 0..K-1, the
label's rank among its keys; the mapper builds prompts from the names); grounding lines become
caption dicts with ``tokens_positive`` per box (from the region, else the first occurrence of
``phrase`` in the caption; a region whose ``bbox`` is a list of boxes, as mmdetection's
``goldg2odvg`` writes, gives one box each). The names come from the label map
(``{"0": "person", "1": "bicycle", ...}``) when given, else from the lines' ``category``
fields. Files are read line by line (never as one json document) and the parse is cached.
"""

import functools
import json
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from ...text import validate_spans
from ._utils import (DatasetFormatError, cached_parse, check_box, check_int, check_new_name,
                     read_json)

__all__ = [
    "read_label_map",
    "read_label_map_ids",
    "write_label_map",
    "parse_odvg_jsonl",
    "load_odvg_jsonl",
    "register_odvg",
    "write_odvg_jsonl",
]

logger = logging.getLogger(__name__)


def read_label_map_ids(path: str) -> Dict[int, str]:
    """``{label: name}`` from a label map json ``{"0": name, "1": name, ...}``, in label order.

    The keys are the ``label`` values of the detection lines: any distinct non-negative
    integers. Grounding DINO's converters write 0..K-1, but Open-GroundingDino's ``coco2odvg``
    keeps a COCO json's category ids by default (1-based, with gaps: 1..90 for COCO), and its
    dataset reads any keys; the dicts number the labels contiguously in key order.
    """
    mapping = read_json(path, PathManager.open)
    try:
        labels = sorted((int(k), v) for k, v in mapping.items())
    except (AttributeError, ValueError):
        raise DatasetFormatError(
            f'{path} is not a label map {{"0": name, ...}} with integer keys.'
        ) from None
    keys = [k for k, _ in labels]
    if any(k < 0 for k in keys) or len(set(keys)) != len(keys):
        raise DatasetFormatError(
            f"{path}: label map keys must be distinct non-negative integers, got {keys[:10]}"
            f"{'...' if len(keys) > 10 else ''}."
        )
    if not all(isinstance(v, str) and v for _, v in labels):
        raise DatasetFormatError(f"{path}: label map values must be non-empty names.")
    return dict(labels)


def read_label_map(path: str) -> List[str]:
    """Names from a label map json ``{"0": name, "1": name, ...}``, in label order (the
    contiguous category ids of the dicts; see :func:`read_label_map_ids`)."""
    return list(read_label_map_ids(path).values())


def write_label_map(thing_classes: Sequence[str], path: str) -> None:
    """Write ``{"0": name, ...}``."""
    with PathManager.open(path, "w") as f:
        json.dump({str(i): n for i, n in enumerate(thing_classes)}, f)


def _parse_line(obj, where: str, names: Dict[int, str]) -> dict:
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{where} is not a json object.")
    missing = [k for k in ("filename", "height", "width") if k not in obj]
    if missing:
        raise DatasetFormatError(f"{where} lacks {missing} (it has {sorted(obj)}).")
    kinds = [k for k in ("detection", "od", "grounding") if k in obj]
    if len(kinds) != 1:
        raise DatasetFormatError(
            f"{where} must hold exactly one of 'detection' (or 'od') and 'grounding', "
            f"it has {kinds or 'none'}."
        )
    record = {
        "file_name": obj["filename"],
        # 480.0 is 480, as in the COCO-format loader (record checks want an int)
        "height": check_int(obj["height"], "height", where),
        "width": check_int(obj["width"], "width", where),
    }
    body = obj[kinds[0]]
    if kinds[0] == "grounding":
        caption = body.get("caption") if isinstance(body, dict) else None
        if not isinstance(caption, str) or not caption.strip():
            raise DatasetFormatError(f"{where}: grounding record without a caption.")
        record["caption"] = caption
        record["annotations"] = [
            anno
            for i, region in enumerate(body.get("regions") or [])
            for anno in _parse_region(region, caption, f"{where}, region #{i}")
        ]
        return record
    if not isinstance(body, dict) or not isinstance(body.get("instances", []), list):
        raise DatasetFormatError(f"{where}: '{kinds[0]}' must be {{\"instances\": [...]}}.")
    annos = []
    for i, inst in enumerate(body.get("instances", [])):
        at = f"{where}, instance #{i}"
        if not isinstance(inst, dict) or "bbox" not in inst or "label" not in inst:
            raise DatasetFormatError(f"{at} needs 'bbox' and 'label', got {inst!r}.")
        label = inst["label"]
        if isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise DatasetFormatError(f"{at}: label {label!r} is not a non-negative int.")
        category = inst.get("category")
        if category is not None:
            known = names.setdefault(label, category)
            if known != category:
                raise DatasetFormatError(
                    f"{at}: label {label} is {category!r} here but {known!r} before."
                )
        annos.append(
            {
                "bbox": check_box(inst["bbox"], at, fmt="xyxy"),
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": label,
                "iscrowd": 0,
            }
        )
    record["annotations"] = annos
    return record


def _parse_region(region, caption: str, where: str) -> List[dict]:
    """One annotation per box of a region: ``bbox`` is one XYXY box, or (mmdetection's
    ``goldg2odvg``, one region per phrase) a list of them, all grounded to the same spans."""
    if not isinstance(region, dict) or "bbox" not in region:
        raise DatasetFormatError(f"{where} needs a 'bbox', got {region!r}.")
    spans = region.get("tokens_positive")
    if spans is None:
        phrase = region.get("phrase")
        start = caption.find(phrase) if isinstance(phrase, str) and phrase else -1
        if start < 0:
            raise DatasetFormatError(
                f"{where}: phrase {phrase!r} does not occur in the caption {caption!r} and the "
                "region has no tokens_positive."
            )
        spans = [[start, start + len(phrase)]]
    try:
        spans = [list(s) for s in validate_spans(caption, spans)]
    except ValueError as error:
        raise DatasetFormatError(f"{where}: {error}") from None
    boxes = region["bbox"]
    if not (isinstance(boxes, list) and boxes and all(isinstance(b, list) for b in boxes)):
        boxes = [boxes]
    return [
        {
            "bbox": check_box(box, where if len(boxes) == 1 else f"{where}, box #{k}", "xyxy"),
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": 0,
            "iscrowd": 0,
            "tokens_positive": [list(s) for s in spans],
        }
        for k, box in enumerate(boxes)
    ]


def parse_odvg_jsonl(jsonl_file: str) -> dict:
    """Parse and validate an ODVG file line by line.

    Returns:
        ``{"records": [...], "names": {label: category}}``; records have ``file_name`` relative
        to the image root and ``image_id`` = line number (1-based, blank lines skipped).

    Raises:
        DatasetFormatError: naming the line, for invalid json, missing keys, a height or
            width that is not an integer, a record with neither or both kinds, a bad or
            negative-size box, a span outside the caption, a phrase not in the caption, or one
            label with two category names.
    """
    records, names = [], {}
    with PathManager.open(jsonl_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{jsonl_file}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetFormatError(f"{where} is not valid json ({error}).") from None
            record = _parse_line(obj, where, names)
            record["image_id"] = lineno
            records.append(record)
    return {"records": records, "names": names}


def _thing_classes(names: Dict[int, str], where: str) -> List[str]:
    if not names:
        return []
    if sorted(names) != list(range(len(names))):
        raise DatasetFormatError(
            f"{where}: the detection labels {sorted(names)[:10]}... are not 0..K-1; give a "
            'label map {"<label>": name, ...} with these labels as keys (label_map_file).'
        )
    return [names[k] for k in range(len(names))]


def _is_parse(obj) -> bool:
    """Whether a cached object has the shape :func:`parse_odvg_jsonl` returns."""
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("records"), list)
        and isinstance(obj.get("names"), dict)
        and all(
            isinstance(r, dict) and isinstance(r.get("annotations"), list) for r in obj["records"]
        )
    )


def load_odvg_jsonl(
    jsonl_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    label_map_file: Optional[str] = None,
) -> List[dict]:
    """Load an ODVG file into Detectron2 dicts (detection and grounding lines may mix).

    Args:
        jsonl_file: the file.
        image_root: folder the ``filename`` fields are relative to.
        dataset_name: tags each dict; its metadata gets ``thing_classes`` if it has none.
        label_map_file: ``{"0": name, ...}``; labels outside it raise.

    Returns:
        list of dicts: detection dicts (contiguous ``category_id`` = label) and grounding dicts
        (``caption``, per box ``tokens_positive``).
    """
    parsed = cached_parse(
        jsonl_file, "odvg", functools.partial(parse_odvg_jsonl, jsonl_file), check=_is_parse
    )
    id_map = None  # label -> contiguous id, when the labels are not already 0..K-1
    if label_map_file:
        label_names = read_label_map_ids(label_map_file)
        classes = list(label_names.values())
        unknown = sorted(k for k in parsed["names"] if k not in label_names)
        if unknown:
            raise DatasetFormatError(
                f"{jsonl_file}: labels {unknown[:10]} are not in the label map {label_map_file} "
                f"({len(classes)} names)."
            )
        if list(label_names) != list(range(len(label_names))):
            id_map = {label: k for k, label in enumerate(label_names)}
    else:
        classes = _thing_classes(parsed["names"], jsonl_file)
    for record in parsed["records"]:
        if "caption" in record:
            continue
        for anno in record["annotations"]:
            label = anno["category_id"]
            if (label not in id_map) if id_map is not None else label >= len(classes):
                raise DatasetFormatError(
                    f"{jsonl_file}:{record['image_id']}: label {label} has no name "
                    "(no label map entry and no 'category' field)."
                )
    if dataset_name is not None and classes:
        meta = MetadataCatalog.get(dataset_name)
        if not hasattr(meta, "thing_classes"):
            meta.set(thing_classes=classes)
    dicts = []
    for record in parsed["records"]:
        record = dict(record, file_name=os.path.join(image_root, record["file_name"]))
        if id_map is not None and "caption" not in record:
            record["annotations"] = [
                dict(a, category_id=id_map[a["category_id"]]) for a in record["annotations"]
            ]
        if dataset_name is not None:
            record["dataset_name"] = dataset_name
        dicts.append(record)
    return dicts


def register_odvg(
    name: str,
    jsonl_file: str,
    image_root: str,
    label_map_file: Optional[str] = None,
    metadata: Optional[dict] = None,
) -> None:
    """Register an ODVG file (read lazily; the label map, if any, is read now).

    Args:
        name: the new dataset name.
        jsonl_file: the file.
        image_root: folder of the images.
        label_map_file: label map json; without it the names are collected on first load.
        metadata: extra metadata (``evaluator_type`` defaults to "coco" for detection data
            with a label map, else "grounding").
    """
    check_new_name(name)
    meta = {"evaluator_type": "coco" if label_map_file else "grounding"}
    if label_map_file:
        label_names = read_label_map_ids(label_map_file)
        meta["thing_classes"] = list(label_names.values())
        if list(label_names) != list(range(len(label_names))):
            # The labels as the dataset's ids (COCOEvaluator writes results with them).
            meta["thing_dataset_id_to_contiguous_id"] = {k: i for i, k in enumerate(label_names)}
        meta["label_map_file"] = label_map_file
    meta.update(metadata or {})
    DatasetCatalog.register(
        name, functools.partial(load_odvg_jsonl, jsonl_file, image_root, name, label_map_file)
    )
    MetadataCatalog.get(name).set(odvg_file=jsonl_file, image_root=image_root, **meta)


def _xyxy(anno: dict) -> List[float]:
    box = BoxMode.convert(
        list(anno["bbox"]), anno.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYXY_ABS
    )
    return [float(v) for v in box]


def write_odvg_jsonl(
    dicts: Iterable[dict],
    jsonl_file: str,
    thing_classes: Optional[Sequence[str]] = None,
    image_root: Optional[str] = None,
) -> int:
    """Write Detectron2 dicts as ODVG lines (caption dicts as grounding, others as detection).

    Args:
        dicts: detection dicts (contiguous ``category_id``) and/or grounding dicts
            (``caption`` and per annotation ``tokens_positive``).
        jsonl_file: output path.
        thing_classes: names of the contiguous ids (required for detection dicts).
        image_root: ``filename`` is written relative to it (as is when None).

    Returns:
        the number of lines written.
    """
    count = 0
    with PathManager.open(jsonl_file, "w") as f:
        for d in dicts:
            file_name = d["file_name"]
            if image_root is not None:
                file_name = os.path.relpath(file_name, image_root)
            line = {"filename": file_name, "height": d["height"], "width": d["width"]}
            annos = [a for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
            if "caption" in d:
                caption = d["caption"]
                line["grounding"] = {
                    "caption": caption,
                    "regions": [
                        {
                            "bbox": _xyxy(a),
                            "phrase": " ".join(caption[s:e] for s, e in a["tokens_positive"]),
                            "tokens_positive": [list(s) for s in a["tokens_positive"]],
                        }
                        for a in annos
                        if a.get("tokens_positive")
                    ],
                }
            else:
                if annos and thing_classes is None:
                    raise ValueError(
                        f"Image {d.get('image_id')!r} is a detection dict; pass thing_classes "
                        "to name its labels."
                    )
                line["detection"] = {
                    "instances": [
                        {
                            "bbox": _xyxy(a),
                            "label": int(a["category_id"]),
                            "category": thing_classes[a["category_id"]],
                        }
                        for a in annos
                    ]
                }
            f.write(json.dumps(line) + "\n")
            count += 1
    return count
