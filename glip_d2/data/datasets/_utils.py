"""Helpers shared by the dataset families: name checks, record validation, the parse cache.

The parse cache makes "parse once" hold across processes and runs: the first load of a large
annotation file (Objects365 v2 train is several GB of json) stores the parsed result in
``$GLIP_D2_CACHE_DIR`` (default ``~/.cache/glip_d2/datasets``; an empty value turns the cache
off), keyed by the file's absolute path, size and modification time, so a changed file is parsed
again. Cache files are written atomically (temporary file + rename), so ranks that parse at the
same time never read a half-written file, and read back with a restricted unpickler (plain
containers, numpy arrays and Detectron2's ``BoxMode`` only): a tampered cache file runs no code,
it is parsed again, and so is one that cannot be read back (truncated, corrupt, of a future
pickle protocol) or holds an object of another shape than the parse gives.
"""

import hashlib
import json
import logging
import math
import numbers
import os
import pickle
from typing import Any, Callable, Optional, Sequence, TypeVar

import numpy as np

from detectron2.data import DatasetCatalog

from ...atomic_file import atomic_write
from ...safe_pickle import restricted_load

__all__ = [
    "DatasetFormatError",
    "cache_dir",
    "cached_parse",
    "check_new_name",
    "check_box",
    "check_int",
    "read_json",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Bump when the structure of cached objects or the validation of a parse changes, so old cache
# files are ignored (2: stricter types, duplicate ids and "ignore" refused; 3: malformed
# segmentations refused, ODVG multi-box regions and label maps with any integer keys; 4: MDETR
# and ODVG sizes checked as integers, 480.0 stored as 480; 5: an RLE's size checked against its
# image's).
_CACHE_VERSION = 5
# The only class (besides containers and numpy arrays) that parsed records hold.
_CACHE_GLOBALS = (("detectron2.structures.boxes", "BoxMode"),)


class DatasetFormatError(ValueError):
    """An annotation file breaks its format; the message names the file and the record."""


def read_json(path: str, open_file: Callable = open):
    """The json document of ``path``, read as UTF-8.

    Raises:
        DatasetFormatError: for a file that is not json (truncated, or not UTF-8), naming the file
            and where it breaks; json's own error names neither the file nor what to do.
    """
    with open_file(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetFormatError(
                f"{path} is not valid json ({e}); the file may be truncated (an interrupted "
                "download or copy) or not UTF-8: write it again from its source."
            ) from None


def check_new_name(name: str) -> None:
    """Refuse empty names and names that are already registered (Detectron2 builtins included).

    Raises:
        ValueError: if ``name`` is not a non-empty string or is already in ``DatasetCatalog``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A dataset name must be a non-empty string, got {name!r}.")
    if name in DatasetCatalog.list():
        raise ValueError(
            f"Dataset {name!r} is already registered; glip_d2 never replaces a registration "
            "(Detectron2's builtin names included). Pick another name, or "
            "DatasetCatalog.remove(name) first if you own the old one."
        )


def _is_real(value) -> bool:
    # bool is an int to Python, and json's true is never meant as a coordinate or an id.
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_box(box, where: str, fmt: str = "xywh") -> list:
    """Validate one box and return it as four Python floats.

    Args:
        box: ``[x, y, w, h]`` (``fmt="xywh"``) or ``[x1, y1, x2, y2]`` (``fmt="xyxy"``).
        where: the record, for the error message (e.g. ``"file.json: annotation #3 (id 7)"``).
        fmt: "xywh" or "xyxy".

    Raises:
        DatasetFormatError: if the box is not a flat list of four finite numbers (strings,
            booleans and nested lists are not converted) or has a negative size.
    """
    values = None
    if isinstance(box, (list, tuple)) and len(box) == 4 and all(_is_real(v) for v in box):
        try:
            values = [float(v) for v in box]
        except OverflowError:  # an integer beyond any float
            values = None
    if values is None or not all(math.isfinite(v) for v in values):
        raise DatasetFormatError(
            f"{where}: bbox {box!r} is not four finite numbers ({fmt}) in a flat list; fix or "
            "remove the record."
        )
    if fmt == "xywh":
        width, height = values[2], values[3]
    else:
        width, height = values[2] - values[0], values[3] - values[1]
    if width < 0 or height < 0:
        raise DatasetFormatError(
            f"{where}: bbox {box!r} ({fmt}) has a negative width or height; fix or remove the "
            "record."
        )
    return values


def check_int(value, what: str, where: str, choices: Optional[Sequence[int]] = None) -> int:
    """Return ``value`` as an int if it is an integer (and one of ``choices``, when given).

    A float with an integral value (``512.0``, as some json writers emit sizes and ids) is that
    integer, as Detectron2's loader takes it; fractional floats (``1.7``), strings (``"1"``),
    booleans and null are refused rather than converted: a converted id silently names another
    category or image.

    Raises:
        DatasetFormatError: naming ``what`` and ``where``.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DatasetFormatError(f"{where}: {what} {value!r} is not an integer; fix the record.")
    if choices is not None and value not in choices:
        raise DatasetFormatError(
            f"{where}: {what} {value!r} is not one of {list(choices)}; fix the record."
        )
    return int(value)


def cache_dir() -> Optional[str]:
    """The parse-cache folder, or None when ``GLIP_D2_CACHE_DIR`` is set to an empty value."""
    path = os.environ.get("GLIP_D2_CACHE_DIR")
    if path is None:
        path = os.path.join(os.path.expanduser("~"), ".cache", "glip_d2", "datasets")
    return path or None


def _cache_file(source: str, tag: str) -> Optional[str]:
    folder = cache_dir()
    if folder is None:
        return None
    stat = os.stat(source)
    key = f"{os.path.abspath(source)}|{stat.st_size}|{stat.st_mtime_ns}|{tag}|{_CACHE_VERSION}"
    return os.path.join(folder, hashlib.sha1(key.encode()).hexdigest()[:24] + f".{tag}.pkl")


def cached_parse(
    source: str,
    tag: str,
    parse: Callable[[], T],
    peek: bool = False,
    check: Optional[Callable[[Any], bool]] = None,
) -> Optional[T]:
    """Return ``parse()``, computed once per version of ``source`` and stored in the cache.

    Args:
        source: the annotation file the result is derived from.
        tag: what was derived (different tags of one file are cached separately).
        parse: computes the result; it must be picklable.
        peek: only look into the cache: return None instead of parsing when nothing is cached.
        check: whether an object read from the cache has the shape ``parse()`` returns; a cache
            file that fails it (written by other code, or damaged into another valid pickle)
            is parsed again.
    """
    path = _cache_file(source, tag)
    if path is not None and os.path.isfile(path):
        found, result = _read_cache(path, check)
        if found:
            return result
    if peek:
        return None
    result = parse()
    if path is not None:
        try:
            atomic_write(
                path, lambda f: pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL),
                binary=True,
            )
        except OSError as error:
            logger.warning(f"Could not write the parse cache {path} ({error}); continuing without.")
    return result


def _read_cache(path: str, check: Optional[Callable[[Any], bool]]):
    """``(True, object)`` from a usable cache file, else ``(False, None)`` with a warning.

    The cache is only an optimisation: whatever is wrong with the file, the source is parsed
    again rather than failing the run.
    """
    try:
        with open(path, "rb") as f:
            result = restricted_load(f, extra_globals=_CACHE_GLOBALS)
    except Exception as error:  # truncated, corrupt, future-protocol pickles: many types
        logger.warning(
            f"Ignoring the unreadable cache file {path} ({type(error).__name__}: {error}); "
            "parsing again."
        )
        return False, None
    try:
        usable = check is None or bool(check(result))
    except Exception:  # an object odd enough to break the check is not what the parse gives
        usable = False
    if not usable:
        logger.warning(
            f"Ignoring the cache file {path}: it holds a {type(result).__name__} that is not what "
            "the parse gives (damaged, or written by other code); parsing again."
        )
        return False, None
    return True, result


def describe(items: Sequence, limit: int = 10) -> str:
    """``[a, b, c, ...]`` with at most ``limit`` items, for error messages."""
    items = list(items)
    head = ", ".join(repr(i) for i in items[:limit])
    return f"[{head}{', ...' if len(items) > limit else ''}] ({len(items)} in all)"
