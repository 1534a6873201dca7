"""Image-caption collections (jsonl or CSV, the CC3M/SBU dump format): reading, writing, and the
round-robin shards of a pseudo-labelling run. Caption datasets (``captions.py``) and self-training
(:mod:`glip_d2.selftrain`) both read them."""

import csv
import json
import os
from dataclasses import dataclass
from typing import List, Optional

from ...atomic_file import atomic_write

__all__ = ["CaptionRecord", "read_caption_collection", "resolve_image_path", "shard_records"]

# Accepted column / key names, first match wins.
_IMAGE_KEYS = ("file_name", "image", "image_path", "path", "url")
_CAPTION_KEYS = ("caption", "text")


@dataclass(frozen=True)
class CaptionRecord:
    """One image and its caption.

    Attributes:
        image_id: the record's "id" when given, else its 0-based position in the collection.
        file_name: image path as in the collection (relative to the image root, or absolute).
        caption: the caption.
    """

    image_id: int
    file_name: str
    caption: str


def _pick(row: dict, keys, what: str, where: str) -> str:
    """The first of ``keys`` with a non-blank string value, stripped.

    Raises:
        ValueError: if that value is not a string (a list or object would become its repr) or
            no key has a non-blank one.
    """
    for k in keys:
        value = row.get(k)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(
                f"{where}: {k!r} holds {value!r} ({type(value).__name__}), but the {what} must "
                f"be a string; give one {what} per record, as a string."
            )
        if value.strip():
            return value.strip()
    raise ValueError(
        f"{where}: no {what} (expected a non-blank string under one of the keys {list(keys)}); "
        f"got {sorted(row)}."
    )


def _csv_rows(path: str, delimiter: str) -> list:
    """``(where, row)`` per data row of a CSV / TSV file with a header row."""
    rows = []
    # utf-8-sig: spreadsheet programs start a UTF-8 CSV with a byte-order mark, which would
    # otherwise become part of the first column's name ("\ufefffile_name").
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        for n, row in enumerate(reader, 2):
            if None in row:  # DictReader files the fields past the header's under None
                raise ValueError(
                    f"{path}:{n}: {len(reader.fieldnames) + len(row[None])} fields, but the "
                    f"header has {len(reader.fieldnames)} columns {reader.fieldnames}; quote a "
                    f"field that contains {delimiter!r} (or remove the extra fields)."
                )
            rows.append((f"{path}:{n}", row))
    return rows


def _integer_id(value, where: str) -> int:
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not number.is_integer():
        raise ValueError(f"{where}: id {value!r} is not an integer; give integer ids or none.")
    return int(number)


def read_caption_collection(path: str) -> List[CaptionRecord]:
    """Read an image-caption collection.

    Args:
        path: a ``.jsonl`` file (one object per line with "file_name" (or "image") and "caption",
            optionally an integer "id") or a ``.csv`` / ``.tsv`` file with a header row holding the
            same columns.

    Returns:
        records in file order.

    Raises:
        ValueError: on an unknown extension, a missing field, an empty (or blank) caption, a
            caption or image path that is not a string, a CSV row with more fields than the
            header, a repeated id, or a collection without any record.
    """
    ext = os.path.splitext(path)[1].lower()
    rows = []
    if ext in (".jsonl", ".json"):
        with open(path, encoding="utf-8-sig") as f:  # a leading byte-order mark is no JSON
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(
                        f"{path}:{n}: not valid JSON ({error.msg} at column {error.colno}); every "
                        "line must be one JSON object."
                    ) from None
                if not isinstance(row, dict):
                    raise ValueError(
                        f"{path}:{n}: a JSON {type(row).__name__}, not an object; every line must "
                        'be {"file_name": ..., "caption": ...}.'
                    )
                rows.append((f"{path}:{n}", row))
    elif ext in (".csv", ".tsv"):
        rows = _csv_rows(path, "\t" if ext == ".tsv" else ",")
    else:
        raise ValueError(
            f"Unknown collection format {ext!r} ({path}); give a .jsonl file or a .csv/.tsv with "
            "a header row (file_name, caption)."
        )
    if not rows:
        # an empty file (a failed dump) would make an empty pseudo-label dataset or concept pool
        # that fails far from its cause, or trains on nothing
        raise ValueError(
            f"{path} holds no image-caption record; give a collection with at least one line "
            '{"file_name": ..., "caption": ...} (.jsonl) or one row under the header (.csv/.tsv).'
        )
    records, seen = [], set()
    for index, (where, row) in enumerate(rows):
        caption = _pick(row, _CAPTION_KEYS, "caption", where)
        image_id = _integer_id(row.get("id"), where) if row.get("id") not in (None, "") else index
        if image_id in seen:
            raise ValueError(f"{where}: image id {image_id} is repeated; ids must be unique.")
        seen.add(image_id)
        records.append(
            CaptionRecord(image_id, _pick(row, _IMAGE_KEYS, "image path", where), caption)
        )
    return records


def shard_records(records: List[CaptionRecord], shard: int, num_shards: int) -> List[CaptionRecord]:
    """Every ``num_shards``-th record starting at ``shard`` (round robin keeps shards balanced
    when a collection is sorted by size or source)."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(
            f"Need 0 <= shard < num_shards, got shard={shard}, num_shards={num_shards}."
        )
    return records[shard::num_shards]


def resolve_image_path(file_name: str, image_root: Optional[str]) -> str:
    """``file_name`` joined to ``image_root`` unless it is absolute."""
    if image_root and not os.path.isabs(file_name):
        return os.path.join(image_root, file_name)
    return file_name


def write_caption_collection(json_file: str, path: str) -> int:
    """Write the images of a COCO-style json whose images carry a "caption" as a jsonl collection
    (file_name, caption, id) for pseudo-labelling; the annotations are not copied.

    Returns:
        the number of records written.

    Raises:
        ValueError: if an image has no caption.
    """
    with open(json_file, encoding="utf-8") as f:
        images = json.load(f)["images"]
    missing = [im.get("id") for im in images if not im.get("caption")]
    if missing:
        raise ValueError(
            f"{json_file}: {len(missing)} images have no 'caption' (first ids {missing[:5]}); only "
            "captioned images make a pseudo-labelling collection."
        )

    def write(f):
        for im in images:
            f.write(
                json.dumps({"file_name": im["file_name"], "caption": im["caption"], "id": im["id"]})
                + "\n"
            )

    atomic_write(path, write)
    return len(images)
