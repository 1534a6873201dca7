"""Few-shot subsets of detection datasets (DATASETS.FEW_SHOT, the ODinW protocol).

Images are visited in a seeded random order and an image is kept when one of its categories
still has fewer than k annotated instances; every kept image keeps all its annotations. The
result has at least k instances of every category (when the dataset has that many), usually a
few more, and is the same for the same records, k and seed.
"""

import logging
import random
from collections import Counter
from typing import Dict, List, Optional, Sequence

__all__ = ["sample_few_shot", "category_counts"]

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
) -> List[Dict]:
    """A subset of detection records with at least ``k`` instances of every category.

    Args:
        dicts: Detectron2 detection records (with "annotations").
        k: instances wanted per category (k-shot), >= 1.
        seed: the order in which images are considered; the same seed gives the same subset.
        categories: the contiguous category ids to cover (default: all that occur).
        source: name used in the log and error messages.

    Returns:
        the chosen records, in their original order.

    Raises:
        ValueError: if ``k < 1`` or the records hold no annotation of the categories.
    """
    if k < 1:
        raise ValueError(f"DATASETS.FEW_SHOT must be >= 1 shots per category (0 = off), got {k}.")
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
    chosen.sort()
    subset = [dicts[i] for i in chosen]
    counts = category_counts(subset)
    logger.info(
        f"{source}: {k}-shot subset (seed {seed}) of {len(subset)} of {len(dicts)} images, "
        f"{sum(counts[c] for c in wanted)} instances, {min(counts[c] for c in wanted)}-"
        f"{max(counts[c] for c in wanted)} per category."
    )
    return subset
