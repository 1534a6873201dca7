"""Few-shot subsets of detection datasets (DATASETS.FEW_SHOT, the ODinW protocol).

Two ways to count k shots (``DATASETS.FEW_SHOT_MODE``); in both an image is kept when one of its
categories still needs shots, and a kept image keeps all its annotations:

* ``"official"`` (official GLIP's ``COCODataset`` few-shot): k *images* per category. Images are
  visited in image-id order, shuffled with ``random.Random(seed)`` unless the seed is 0 (seed 0
  = image-id order, whatever the order of the records), and a kept image counts once for each
  category it shows.
* ``"instances"``: k annotated *instances* per category, images visited in a seeded random order
  (seed 0 included); the subset has at least k instances of every category, usually a few more.

Either way the subset is the same for the same records, k, seed and mode, and a category with
fewer than k shots (images or instances, as k counts) keeps all it has, with a warning.
"""

import logging
import random
from collections import Counter
from typing import Dict, List, Optional, Sequence

__all__ = ["FEW_SHOT_MODES", "sample_few_shot", "category_counts"]

FEW_SHOT_MODES = ("official", "instances")

logger = logging.getLogger(__name__)


def category_counts(dicts: Sequence[Dict]) -> Counter:
    """Annotated (non-crowd) instances per ``category_id``."""
    return Counter(
        a["category_id"] for d in dicts for a in d.get("annotations", []) if not a.get("iscrowd", 0)
    )


def sample_few_shot(
    dicts: Sequence[Dict],
    k: int,
    seed: int = 0,
    categories: Optional[Sequence[int]] = None,
    source: str = "the dataset",
    mode: str = "instances",
) -> List[Dict]:
    """A k-shot subset of detection records (see the module docstring for the two modes).

    Args:
        dicts: Detectron2 detection records (with "annotations").
        k: shots wanted per category, >= 1: instances, or images in "official" mode.
        seed: the order in which images are considered; the same seed gives the same subset.
        categories: the contiguous category ids to cover (default: all that occur).
        source: name used in the log and error messages.
        mode: "instances" or "official" (:data:`FEW_SHOT_MODES`).

    Returns:
        the chosen records, in their original order.

    Raises:
        ValueError: if ``k < 1``, the records hold no annotation of the categories, or (in
            "official" mode) a record has no ``image_id`` or the ids cannot be ordered.
    """
    if k < 1:
        raise ValueError(f"DATASETS.FEW_SHOT must be >= 1 shots per category (0 = off), got {k}.")
    if mode not in FEW_SHOT_MODES:
        raise ValueError(f"DATASETS.FEW_SHOT_MODE must be one of {FEW_SHOT_MODES}, got {mode!r}.")
    available = category_counts(dicts)
    wanted = sorted(set(categories) if categories is not None else set(available))
    if not wanted or not any(available[c] for c in wanted):
        raise ValueError(f"{source} has no annotated instance to sample {k}-shot data from.")
    # what k counts: a category with many boxes in few images is short of images
    unit = "images" if mode == "official" else "instances"
    shots = _images_per_category(dicts) if mode == "official" else available
    short = {c: shots[c] for c in wanted if shots[c] < k}
    if short:
        logger.warning(
            f"{source}: categories {short} (id: {unit}) have fewer than {k} {unit}; "
            "the few-shot subset keeps all of theirs."
        )
    chosen = sorted(_official(dicts, k, seed, wanted, source) if mode == "official"
                    else _instances(dicts, k, seed, wanted, available))
    subset = [dicts[i] for i in chosen]
    counts = category_counts(subset)
    # per category in the unit k counts, so the line shows that each category got its k
    got = _images_per_category(subset) if mode == "official" else counts
    logger.info(
        f"{source}: {k}-shot subset (seed {seed}, {mode} mode) of {len(subset)} of {len(dicts)} "
        f"images, {sum(counts[c] for c in wanted)} instances; {unit} per category: "
        f"{min(got[c] for c in wanted)}-{max(got[c] for c in wanted)}."
    )
    return subset


def _instances(dicts, k: int, seed: int, wanted, available) -> List[int]:
    need = {c: min(k, available[c]) for c in wanted}
    order = list(range(len(dicts)))
    random.Random(seed).shuffle(order)
    chosen = []
    for i in order:
        if not any(need.values()):
            break
        cats = [
            a["category_id"] for a in dicts[i].get("annotations", []) if not a.get("iscrowd", 0)
        ]
        if any(need.get(c, 0) > 0 for c in cats):
            chosen.append(i)
            for c in cats:
                if c in need:
                    need[c] = max(0, need[c] - 1)
    return chosen


def _images_per_category(dicts) -> Counter:
    """Images showing each ``category_id`` (crowd boxes included, as official mode counts)."""
    return Counter(c for d in dicts for c in {a["category_id"] for a in d.get("annotations", [])})


def _official(dicts, k: int, seed: int, wanted, source: str) -> List[int]:
    """Official GLIP's image-level count: ids sorted, shuffled unless seed 0; an image is kept
    when one of the categories it shows (crowd boxes included, as official) still needs images,
    and then counts once for each of them."""
    fix = "Give every record its image_id, or use DATASETS.FEW_SHOT_MODE instances."
    for i, d in enumerate(dicts):
        if d.get("image_id") is None:
            raise ValueError(
                f"{source}: record {i} ({d.get('file_name', 'no file_name')}) has no image_id, "
                f"but DATASETS.FEW_SHOT_MODE official visits images in image_id order. {fix}"
            )
    try:
        order = sorted(range(len(dicts)), key=lambda i: dicts[i]["image_id"])
    except TypeError as e:  # e.g. int and str ids
        raise ValueError(
            f"{source}: the image_ids cannot be ordered ({e}), but DATASETS.FEW_SHOT_MODE "
            f"official visits images in image_id order. {fix}"
        ) from e
    if seed != 0:
        random.Random(seed).shuffle(order)
    need = dict.fromkeys(wanted, k)
    chosen = []
    for i in order:
        cats = {a["category_id"] for a in dicts[i].get("annotations", [])}
        if any(need.get(c, 0) > 0 for c in cats):
            chosen.append(i)
            for c in cats:
                if c in need:
                    need[c] -= 1
    return chosen
