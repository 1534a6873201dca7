"""ODVG jsonl (Grounding DINO / Open-GroundingDino): read, register and write.

One json object per line, one line per image::

    {"filename": "a.jpg", "height": 480, "width": 640,
     "detection": {"instances": [{"bbox": [x1, y1, x2, y2], "label": 0, "category": "dog"}]}}
    {"filename": "b.jpg", "height": 480, "width": 640,
     "grounding": {"caption": "a dog on a sofa",
                   "regions": [{"bbox": [x1, y1, x2, y2], "phrase": "a dog",
                                "tokens_positive": [[0, 5]]}]}}

Boxes are absolute XYXY. Detection lines (``"od"`` is accepted for ``"detection"``) become
detection dicts (``category_id`` = ``label``; the mapper builds prompts from the names);
grounding lines become caption dicts with ``tokens_positive`` per box (from the region, else the
first occurrence of ``phrase`` in the caption). The names come from the label map
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
from ._utils import DatasetFormatError, cached_parse, check_box, check_new_name

__all__ = [
    "read_label_map",
    "write_label_map",
    "parse_odvg_jsonl",
    "load_odvg_jsonl",
    "register_odvg",
    "write_odvg_jsonl",
]

logger = logging.getLogger(__name__)


def read_label_map(path: str) -> List[str]:
    """Names from a label map json ``{"0": name, "1": name, ...}`` (keys 0..K-1)."""
    with PathManager.open(path) as f:
        mapping = json.load(f)
    try:
        labels = sorted((int(k), v) for k, v in mapping.items())
    except (AttributeError, ValueError):
        raise DatasetFormatError(
            f'{path} is not a label map {{"0": name, ...}} with integer keys.'
        ) from None
    if [k for k, _ in labels] != list(range(len(labels))) or not all(
        isinstance(v, str) and v for _, v in labels
    ):
        raise DatasetFormatError(
            f"{path}: label map keys must be 0..K-1 (got {[k for k, _ in labels][:10]}...) and "
            "values non-empty names."
        )
    return [v for _, v in labels]


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
    record = {"file_name": obj["filename"], "height": obj["height"], "width": obj["width"]}
    body = obj[kinds[0]]
    if kinds[0] == "grounding":
        caption = body.get("caption") if isinstance(body, dict) else None
        if not isinstance(caption, str) or not caption.strip():
            raise DatasetFormatError(f"{where}: grounding record without a caption.")
        record["caption"] = caption
        record["annotations"] = [
            _parse_region(region, caption, f"{where}, region #{i}")
            for i, region in enumerate(body.get("regions") or [])
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
        if not isinstance(label, int) or label < 0:
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


def _parse_region(region, caption: str, where: str) -> dict:
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
    return {
        "bbox": check_box(region["bbox"], where, fmt="xyxy"),
        "bbox_mode": BoxMode.XYXY_ABS,
        "category_id": 0,
        "iscrowd": 0,
        "tokens_positive": spans,
    }


def parse_odvg_jsonl(jsonl_file: str) -> dict:
    """Parse and validate an ODVG file line by line.

    Returns:
        ``{"records": [...], "names": {label: category}}``; records have ``file_name`` relative
        to the image root and ``image_id`` = line number (1-based, blank lines skipped).

    Raises:
        DatasetFormatError: naming the line, for invalid json, missing keys, a record with
            neither or both kinds, a bad or negative-size box, a span outside the caption, a
            phrase not in the caption, or one label with two category names.
    """
    records, names = [], {}
    with PathManager.open(jsonl_file) as f:
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
            "label map."
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
    if label_map_file:
        classes = read_label_map(label_map_file)
        unknown = sorted(k for k in parsed["names"] if k >= len(classes))
        if unknown:
            raise DatasetFormatError(
                f"{jsonl_file}: labels {unknown[:10]} are not in the label map {label_map_file} "
                f"({len(classes)} names)."
            )
    else:
        classes = _thing_classes(parsed["names"], jsonl_file)
    for record in parsed["records"]:
        if "caption" in record:
            continue
        for anno in record["annotations"]:
            if anno["category_id"] >= len(classes):
                raise DatasetFormatError(
                    f"{jsonl_file}:{record['image_id']}: label {anno['category_id']} has no name "
                    "(no label map entry and no 'category' field)."
                )
    if dataset_name is not None and classes:
        meta = MetadataCatalog.get(dataset_name)
        if not hasattr(meta, "thing_classes"):
            meta.set(thing_classes=classes)
    dicts = []
    for record in parsed["records"]:
        record = dict(record, file_name=os.path.join(image_root, record["file_name"]))
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
        meta["thing_classes"] = read_label_map(label_map_file)
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
