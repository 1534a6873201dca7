"""Class descriptions per dataset from the config (``DATASETS.CLASS_DESCRIPTIONS``).

Each entry is ``[dataset_name, descriptions]``, where ``descriptions`` is a JSON/YAML file or
inline JSON (a list with one ``{prefix, name, suffix}`` per class, or a mapping class name ->
description; see :mod:`glip_d2.text.descriptions`). The dataset's vocabulary, wherever it is
used (training prompts, the test vocabulary), is then its class names with these descriptions.
"""

import difflib
import os
from typing import Dict, List, Optional, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..text.descriptions import apply_descriptions, load_descriptions

__all__ = ["class_descriptions_from_config", "dataset_vocabulary"]


def class_descriptions_from_config(cfg) -> Dict[str, Union[list, dict]]:
    """``{dataset name: descriptions}`` of ``DATASETS.CLASS_DESCRIPTIONS`` (read once per call).

    Raises:
        ValueError: for an entry that is not ``[dataset_name, file or JSON]``, a dataset named
            twice, a dataset that is neither in DATASETS.TRAIN/TEST nor registered (a misspelt
            name, whose descriptions would never be used), a file that cannot be parsed, or
            descriptions that do not fit the known class names of a DATASETS.TRAIN/TEST
            dataset (a list of another length, a mapping key that is no class name).
    """
    used = list(cfg.DATASETS.get("TRAIN", [])) + list(cfg.DATASETS.get("TEST", []))
    # entries the config declares (registered only where used, e.g. only the test sets with
    # --eval-only) are datasets too, not misspellings
    declared = [e[0] for key in ("CUSTOM", "CAPTIONS", "PSEUDO_LABELS")
                for e in cfg.DATASETS.get(key, []) if len(e) and isinstance(e[0], str)]
    out = {}
    for entry in cfg.DATASETS.get("CLASS_DESCRIPTIONS", []):
        # a bare string of two characters would pass the length test as [char, char]
        if isinstance(entry, str) or len(entry) != 2 or not all(isinstance(e, str) for e in entry):
            raise ValueError(
                f"DATASETS.CLASS_DESCRIPTIONS entry {entry!r} must be [dataset_name, "
                "descriptions file or inline JSON]."
            )
        if entry[0] in out:  # one of the two would be silently ignored
            raise ValueError(
                f"DATASETS.CLASS_DESCRIPTIONS names dataset {entry[0]!r} twice; give each "
                "dataset one descriptions entry."
            )
        if entry[0] not in used + declared and entry[0] not in DatasetCatalog:
            raise ValueError(_unknown_dataset_message(entry[0], used, declared))
        out[entry[0]] = load_descriptions(entry[1])
        if entry[0] in used:
            _check_fits_classes(entry[0], entry[1], out[entry[0]])
    return out


def _check_fits_classes(name: str, source: str, descriptions) -> None:
    """Refuse descriptions that do not fit a dataset's classes (another number of entries, a
    name it does not have) when the config is read, naming the entry; found later, a training
    dataset's failed only in the first training step, reported as a bad training record."""
    classes = MetadataCatalog.get(name).get("thing_classes", None)
    if classes is None:  # not known before the dataset is loaded: checked where it is used
        return
    try:
        apply_descriptions(classes, descriptions)
    except (TypeError, ValueError) as e:
        where = repr(source) if os.path.isfile(source) else "inline JSON"
        raise ValueError(
            f"DATASETS.CLASS_DESCRIPTIONS entry for dataset {name!r} ({where}) does not fit its "
            f"classes: {e}"
        ) from e


def _unknown_dataset_message(name: str, used: List[str], declared: List[str]) -> str:
    known = list(dict.fromkeys(used + declared + list(DatasetCatalog)))  # each name once
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    return (
        f"DATASETS.CLASS_DESCRIPTIONS names dataset {name!r}, which is neither in "
        f"DATASETS.TRAIN/TEST ({', '.join(used) or 'none'}), DATASETS.CUSTOM / CAPTIONS / "
        "PSEUDO_LABELS nor registered, so its descriptions "
        f"would never be used.{hint} Name the dataset as DATASETS.TRAIN/TEST does."
    )


def dataset_vocabulary(dataset_name: str, descriptions=None) -> Optional[List]:
    """The dataset's ``thing_classes`` with its descriptions applied; None without classes."""
    names = MetadataCatalog.get(dataset_name).get("thing_classes", None)
    if names is None:
        return None
    return apply_descriptions(names, descriptions)
