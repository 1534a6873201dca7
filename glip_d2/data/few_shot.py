"""Few-shot subsets of detection datasets (DATASETS.FEW_SHOT, the ODinW protocol).

Two ways to count k shots (``DATASETS.FEW_SHOT_MODE``); in both an image is kept when one of its
categories still needs shots, and a kept image keeps all its annotations:

* ``"official"`` (official GLIP's ``COCODataset`` few-shot): k *images* per category. Images are
  visited in image-id order, shuffled with ``random.Random(seed)`` unless the seed is 0 (seed 0
  = the dataset's own order), and a kept image counts once for each category it shows.
* ``"instances"``: k annotated *instances* per category, images visited in a seeded random order
  (seed 0 included); the subset has at least k instances of every category, usually a few more.

Either way the subset is the same for the same records, k, seed and mode.
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
        ValueError: if ``k < 1`` or the records hold no annotation of the categories.
    """
    if k < 1:
        raise ValueError(f"DATASETS.FEW_SHOT must be >= 1 shots per category (0 = off), got {k}.")
    if mode not in FEW_SHOT_MODES:
        raise ValueError(f"DATASETS.FEW_SHOT_MODE must be one of {FEW_SHOT_MODES}, got {mode!r}.")
    available = category_counts(dicts)
    wanted = sorted(set(categories) if categories is not None else set(available))
    if not wanted or not any(available[c] for c in wanted):
        raise ValueError(f"{source} has no annotated instance to sample {k}-shot data from.")
    short = {c: available[c] for c in wanted if available[c] < k}
    if short:
        logger.warning(
            f"{source}: categories {short} (id: instances) have fewer than {k} instances; "
            "the few-shot subset keeps all of theirs."
        )
    chosen = sorted(_official(dicts, k, seed, wanted) if mode == "official"
                    else _instances(dicts, k, seed, wanted, available))
    subset = [dicts[i] for i in chosen]
    counts = category_counts(subset)
    logger.info(
        f"{source}: {k}-shot subset (seed {seed}) of {len(subset)} of {len(dicts)} images, "
        f"{sum(counts[c] for c in wanted)} instances, {min(counts[c] for c in wanted)}-"
        f"{max(counts[c] for c in wanted)} per category."
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


def _official(dicts, k: int, seed: int, wanted) -> List[int]:
    """Official GLIP's image-level count: ids sorted, shuffled unless seed 0; an image is kept
    when one of the categories it shows (crowd boxes included, as official) still needs images,
    and then counts once for each of them."""
    order = sorted(range(len(dicts)), key=lambda i: dicts[i]["image_id"])
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
