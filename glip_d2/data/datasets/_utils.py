"""Helpers shared by the dataset families: name checks, record validation, the parse cache.

The parse cache makes "parse once" hold across processes and runs: the first load of a large
annotation file (Objects365 v2 train is several GB of json) stores the parsed result in
``$GLIP_D2_CACHE_DIR`` (default ``~/.cache/glip_d2/datasets``; an empty value turns the cache
off), keyed by the file's absolute path, size and modification time, so a changed file is parsed
again. Cache files are written atomically (temporary file + rename), so ranks that parse at the
same time never read a half-written file, and read back with a restricted unpickler (plain
containers, numpy arrays and Detectron2's ``BoxMode`` only): a tampered cache file runs no code,
it is parsed again.
"""

import hashlib
import logging
import math
import os
import pickle
from typing import Callable, Optional, Sequence, TypeVar

from detectron2.data import DatasetCatalog

from ...safe_pickle import restricted_load

__all__ = ["DatasetFormatError", "cache_dir", "cached_parse", "check_new_name", "check_box"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Bump when the structure of cached objects changes, so old cache files are ignored.
_CACHE_VERSION = 1
# The only class (besides containers and numpy arrays) that parsed records hold.
_CACHE_GLOBALS = (("detectron2.structures.boxes", "BoxMode"),)


class DatasetFormatError(ValueError):
    """An annotation file breaks its format; the message names the file and the record."""


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


def check_box(box, where: str, fmt: str = "xywh") -> list:
    """Validate one box and return it as four Python floats.

    Args:
        box: ``[x, y, w, h]`` (``fmt="xywh"``) or ``[x1, y1, x2, y2]`` (``fmt="xyxy"``).
        where: the record, for the error message (e.g. ``"file.json: annotation #3 (id 7)"``).
        fmt: "xywh" or "xyxy".

    Raises:
        DatasetFormatError: if the box is not four finite numbers or has a negative size.
    """
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        values = None
    if values is None or len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise DatasetFormatError(f"{where}: bbox {box!r} is not four finite numbers ({fmt}).")
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


def cached_parse(source: str, tag: str, parse: Callable[[], T], peek: bool = False) -> Optional[T]:
    """Return ``parse()``, computed once per version of ``source`` and stored in the cache.

    Args:
        source: the annotation file the result is derived from.
        tag: what was derived (different tags of one file are cached separately).
        parse: computes the result; it must be picklable.
        peek: only look into the cache: return None instead of parsing when nothing is cached.
    """
    path = _cache_file(source, tag)
    if path is not None and os.path.isfile(path):
        try:
            with open(path, "rb") as f:
                return restricted_load(f, extra_globals=_CACHE_GLOBALS)
        except (OSError, EOFError, pickle.UnpicklingError) as error:
            logger.warning(f"Ignoring the unreadable cache file {path} ({error}); parsing again.")
    if peek:
        return None
    result = parse()
    if path is not None:
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        except OSError as error:
            logger.warning(f"Could not write the parse cache {path} ({error}); continuing without.")
            if os.path.exists(tmp):
                os.remove(tmp)
    return result


def describe(items: Sequence, limit: int = 10) -> str:
    """``[a, b, c, ...]`` with at most ``limit`` items, for error messages."""
    items = list(items)
    head = ", ".join(repr(i) for i in items[:limit])
    return f"[{head}{', ...' if len(items) > limit else ''}] ({len(items)} in all)"
