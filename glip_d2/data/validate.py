"""Checks of training records when they are first loaded, so a bad record is reported up front
(naming its file and record) instead of crashing training hours later.

Per record (``DATASETS.CHECK_RECORDS``):

* ``"quick"``: the image file exists; ``height`` / ``width`` are positive integers; every
  annotation span of a grounding record is a ``[start, end)`` pair inside the caption and maps
  to at least one token of it (a span over whitespace or invisible characters only maps to
  none); a detection dataset's category names
  are non-empty and tokenize to at least one token;
* ``"full"`` (default): also reads each image's header and compares its size with the
  record's ``height`` / ``width`` (about 0.1 ms per local image);
* ``"none"``: no check.

With ``DATASETS.SKIP_BAD_RECORDS`` bad records are dropped and counted (logged with the first
examples) instead of raising. A bad category name is always an error: dropping it would change
what every prompt of the dataset means.
"""

import logging
import numbers
import os
from typing import List, Optional, Sequence

__all__ = [
    "CHECK_LEVELS",
    "BadRecordError",
    "check_category_names",
    "check_record",
    "check_training_records",
    "describe_record",
]

logger = logging.getLogger(__name__)

CHECK_LEVELS = ("full", "quick", "none")


class BadRecordError(ValueError):
    """A training record cannot be used; the message names the dataset, file and record."""


def describe_record(record: dict) -> str:
    """``dataset 'x', image_id 7, file '/data/a.jpg'`` for messages."""
    parts = []
    if record.get("dataset_name"):
        parts.append(f"dataset {record['dataset_name']!r}")
    if "image_id" in record:
        parts.append(f"image_id {record['image_id']!r}")
    parts.append(f"file {record.get('file_name')!r}")
    return ", ".join(parts)


def _span_problems(record: dict, tokenizer, max_query_len: int) -> List[str]:
    from ..text import span_to_token_range, tokenize, validate_spans

    caption = record.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        return [f"empty caption {caption!r}"]
    # First the spans' form and range (what the mapper's validate_spans rejects), so the token
    # arithmetic below only sees [start, end) pairs inside the caption.
    problems, spans = [], []
    for k, anno in enumerate(record.get("annotations") or []):
        given = anno.get("tokens_positive") or []
        try:
            spans += [(k, s) for s in validate_spans(caption, given)]
        except ValueError as error:
            problems.append(f"annotation #{k}: {error}")
        except TypeError:  # not iterable
            problems.append(
                f"annotation #{k}: tokens_positive {given!r} is not a list of [start, end] spans"
            )
    if not spans:
        return problems
    tokenized = tokenize(tokenizer, [caption], max_query_len, pad_to_max=False)
    encoding = tokenized.encodings[0]
    truncated = len(encoding.ids) >= max_query_len
    covered = max(
        (end for (_, end), special in zip(encoding.offsets, encoding.special_tokens_mask)
         if not special),
        default=0,
    )
    for k, (start, end) in spans:
        if truncated and start >= covered:
            continue  # past the token limit: the mapper drops it (and logs it), by design
        tokens = span_to_token_range(tokenized, (start, min(end, covered) if truncated else end))
        if tokens is None or tokens[0] > tokens[1]:  # what create_positive_map rejects
            problems.append(
                f"annotation #{k}: span [{start}, {end}) = {caption[start:end]!r} maps to no "
                "token (whitespace or invisible characters only)"
            )
    return problems


def check_record(
    record: dict,
    *,
    tokenizer=None,
    max_query_len: int = 256,
    level: str = "full",
) -> List[str]:
    """The problems of one training record (empty list = usable).

    Args:
        record: a Detectron2 dataset dict (grounding fields optional).
        tokenizer: the mapper's tokenizer; None skips the span check.
        max_query_len: the token limit captions are cut at.
        level: "full" or "quick" (see the module docstring).
    """
    problems = []
    file_name = record.get("file_name")
    h, w = record.get("height"), record.get("width")
    # records without sizes (caption collections) get them from the image when mapped
    sizes_given = h is not None or w is not None
    # numpy integers too (records built with numpy / pandas): Detectron2 compares them with ==
    sizes_ok = all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in (h, w)
    )
    if sizes_given and not sizes_ok:
        problems.append(f"height/width {h!r}/{w!r} are not positive integers")
    if not isinstance(file_name, str) or not os.path.isfile(file_name):
        problems.append("image file does not exist")
    elif level == "full" and sizes_ok:
        try:
            from PIL import Image

            with Image.open(file_name) as image:
                actual_w, actual_h = image.size
                if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF-rotated by 90 degrees
                    actual_w, actual_h = actual_h, actual_w
        except Exception as error:  # PIL raises many types for unreadable files
            problems.append(f"image cannot be read ({type(error).__name__}: {error})")
        else:
            if (actual_h, actual_w) != (h, w):
                problems.append(
                    f"the json says height {h}, width {w}, the image is {actual_h} x {actual_w}"
                )
    if tokenizer is not None and "caption" in record:
        problems += _span_problems(record, tokenizer, max_query_len)
    return problems


def check_category_names(
    names: Sequence[str], tokenizer, source: str, max_query_len: Optional[int] = None
) -> None:
    """Raise when a category name is empty, tokenizes to nothing, or (with ``max_query_len``)
    is alone longer than a prompt: it could not be prompted, and its boxes would never be
    trained (the training prompt refuses it the first time it samples it).

    Raises:
        BadRecordError: naming the dataset and the categories.
    """
    from ..text import clean_name

    bad, long = [], []
    for i, name in enumerate(names):
        cleaned = clean_name(name) if isinstance(name, str) else ""
        ids = tokenizer(cleaned, add_special_tokens=False)["input_ids"] if cleaned.strip() else []
        if not ids:
            bad.append(f"#{i} {name!r}")
        elif max_query_len is not None and len(ids) + 2 > max_query_len:  # + [CLS] and [SEP]
            long.append(f"#{i} {name!r} ({len(ids)} tokens)")
    if bad:
        raise BadRecordError(
            f"{source}: category names that are empty or made of invisible characters only "
            f"cannot be put in a prompt: {', '.join(bad[:10])}"
            f"{' ...' if len(bad) > 10 else ''}. Rename them in the json's 'categories'."
        )
    if long:
        raise BadRecordError(
            f"{source}: category names longer than a whole prompt (MODEL.LANGUAGE_BACKBONE."
            f"MAX_QUERY_LEN {max_query_len}, [CLS] and [SEP] included) cannot be put in one: "
            f"{', '.join(long[:10])}{' ...' if len(long) > 10 else ''}. Shorten them in the "
            "json's 'categories' or raise MAX_QUERY_LEN."
        )


def check_training_records(
    dicts: List[dict],
    source: str,
    *,
    tokenizer=None,
    max_query_len: int = 256,
    level: str = "full",
    skip_bad: bool = False,
    category_names: Optional[Sequence[str]] = None,
) -> List[dict]:
    """Check the records of one training dataset; return the usable ones.

    Args:
        dicts: the dataset's records.
        source: the dataset (name and annotation file), for messages.
        tokenizer, max_query_len, level: see :func:`check_record`; level "none" checks nothing.
        skip_bad: drop and count bad records instead of raising.
        category_names: the detection dataset's class names, checked by
            :func:`check_category_names`.

    Raises:
        BadRecordError: naming the first bad record, with the count of bad records.
    """
    if level not in CHECK_LEVELS:
        raise ValueError(f"DATASETS.CHECK_RECORDS {level!r} must be one of {CHECK_LEVELS}.")
    if level == "none":
        return dicts
    if category_names is not None and tokenizer is not None:
        check_category_names(category_names, tokenizer, source, max_query_len)
    kept, bad = [], []
    for i, record in enumerate(dicts):
        problems = check_record(
            record, tokenizer=tokenizer, max_query_len=max_query_len, level=level
        )
        if problems:
            bad.append(f"record #{i} ({describe_record(record)}): " + "; ".join(problems))
        else:
            kept.append(record)
    if not bad:
        return dicts
    if not skip_bad:
        raise BadRecordError(
            f"{source}: {len(bad)} of {len(dicts)} training records cannot be used; the first: "
            f"{bad[0]}. Fix them, or set DATASETS.SKIP_BAD_RECORDS True to drop and count them "
            "(DATASETS.CHECK_RECORDS 'quick' skips the image-size check, 'none' every check)."
        )
    logger.warning(
        f"{source}: dropped {len(bad)} of {len(dicts)} bad training records "
        f"(DATASETS.SKIP_BAD_RECORDS); the first: " + " | ".join(bad[:3])
    )
    return kept

