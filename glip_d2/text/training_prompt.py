"""Training prompts for detection data: the image's categories plus sampled negative ones.

GLIP trains on detection datasets by turning them into grounding data on the fly (official
``od_to_grounding.convert_object_detection_to_grounding_optimized_for_od``): every category
present in the image, plus ``RANDOM_SAMPLE_NEG`` absent ones, in random order, joined with the
separator. Absent categories teach the model to leave unmentioned-in-image names unscored.
"""

import functools
import random
from typing import Dict, List, Sequence, Tuple

from .descriptions import as_description, entry_name
from .prompt import build_detection_prompt, clean_name
from .tokenization import count_tokens

__all__ = ["build_training_prompt"]

_NUM_SPECIAL_TOKENS = 2


def build_training_prompt(
    category_names: Dict[int, object],
    positive_ids: Sequence[int],
    *,
    rng: random.Random,
    shuffle: bool = True,
    num_negatives: int = 85,
    max_categories: int = -1,
    tokenizer=None,
    max_len: int = 256,
    separator: str = ". ",
) -> Tuple[str, Dict[int, Tuple[int, int]]]:
    """Build one training caption from category names.

    Selection, in order of priority:

    1. every positive category (deduplicated), in random order when ``shuffle``;
    2. ``num_negatives`` categories drawn without replacement from the non-positive ones
       (``-1`` = all of them);
    3. at most ``max_categories`` names (``-1`` = no cap), positives first;
    4. with a tokenizer, at most ``max_len`` tokens ([CLS]/[SEP] included): names that do not
       fit are dropped, positives first in line to stay.

    The chosen names are then shuffled together (``shuffle``) or sorted by category id. A caption
    always names at least one category: with no positive and no negative, one random category is
    used. Unlike the official code, the number of negatives is fixed (no CONTROL_PROB draw), and a
    positive that does not fit is dropped from the caption; its boxes must be dropped too.

    Args:
        category_names: contiguous category id -> name (e.g. from ``thing_classes``) or class
            description (``{prefix, name, suffix}``; only the name's span is the label's).
        positive_ids: category ids of the image's boxes (repeats allowed).
        rng: the source of randomness (one per call for reproducible data loading).
        shuffle: random order (official DISABLE_SHUFFLE False) instead of id order.
        num_negatives: negatives to sample (official RANDOM_SAMPLE_NEG); -1 = all.
        max_categories: cap on names in the caption; -1 = none.
        tokenizer: fast tokenizer for the token budget; None = no budget.
        max_len: token budget (MAX_QUERY_LEN).
        separator: text between names (official SEPARATION_TOKENS).

    Returns:
        ``(caption, spans)`` where ``spans`` maps every category id in the caption to its
        ``[start, end)`` character span.

    Raises:
        ValueError: if ``category_names`` is empty, a positive id is not in it, a name is
            empty after :func:`clean_name`, or no chosen name fits ``max_len`` tokens.
    """
    if not category_names:
        raise ValueError("build_training_prompt got no category names; pass thing_classes.")
    positives = sorted(set(int(i) for i in positive_ids))
    unknown = [i for i in positives if i not in category_names]
    if unknown:
        raise ValueError(
            f"Positive category ids {unknown} are not in category_names (ids "
            f"{min(category_names)}..{max(category_names)}); annotations must use contiguous ids."
        )
    negatives = sorted(set(category_names) - set(positives))
    if num_negatives >= 0:
        negatives = rng.sample(negatives, min(num_negatives, len(negatives)))
    elif shuffle:
        rng.shuffle(negatives)
    if shuffle:
        rng.shuffle(positives)
    if not positives and not negatives:
        negatives = [rng.choice(sorted(category_names))]

    candidates = positives + negatives
    if max_categories > 0:
        candidates = candidates[:max_categories]
    for category in candidates:
        if not clean_name(entry_name(category_names[category])):
            raise ValueError(
                f"Category {category} ({category_names[category]!r}) has an empty name after "
                "clean_name; give every category a non-empty name."
            )
    if tokenizer is not None:
        candidates = _fit_token_budget(candidates, category_names, tokenizer, max_len, separator)

    ordered = list(candidates)
    if shuffle:
        rng.shuffle(ordered)
    else:
        ordered.sort()
    caption, spans = build_detection_prompt([category_names[i] for i in ordered], separator)
    return caption, dict(zip(ordered, spans))


def _fit_token_budget(
    candidates: List[int], category_names, tokenizer, max_len: int, separator: str
) -> List[int]:
    """Keep, in priority order, the names whose tokens still fit the budget."""
    sep_len = count_tokens(tokenizer, separator)
    kept: List[int] = []
    used = _NUM_SPECIAL_TOKENS
    for category in candidates:
        extra = _name_tokens(tokenizer, _entry_text(category_names[category]))
        extra += sep_len if kept else 0
        if used + extra <= max_len:
            kept.append(category)
            used += extra
    # The estimate is exact for separators that split words (". ", " "); check the real caption
    # and drop from the lowest priority in case a separator glues names together.
    while len(kept) > 1 and _caption_tokens(kept, category_names, tokenizer, separator) > max_len:
        kept.pop()
    if not kept:
        _raise_nothing_fits(candidates, category_names, tokenizer, max_len)
    return kept


def _raise_nothing_fits(candidates: List[int], category_names, tokenizer, max_len: int) -> None:
    first = candidates[0]
    tokens = _name_tokens(tokenizer, _entry_text(category_names[first]))
    raise ValueError(
        f"No category name fits max_len={max_len} tokens ([CLS] and [SEP] included): category "
        f"{first} ({category_names[first]!r}) alone is {tokens} tokens, and none of the "
        f"{len(candidates) - 1} other chosen categories fits either. Shorten the names or raise "
        "MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN."
    )


def _entry_text(entry) -> str:
    """The prompt text of a name or description (hashable, for the token-count cache)."""
    return clean_name(entry) if isinstance(entry, str) else as_description(entry).text()


@functools.lru_cache(maxsize=1 << 16)
def _name_tokens(tokenizer, text: str) -> int:
    # Called for ~100 names per training image; names repeat across images.
    return count_tokens(tokenizer, text)


def _caption_tokens(ids: List[int], category_names, tokenizer, separator: str) -> int:
    caption, _ = build_detection_prompt([category_names[i] for i in ids], separator)
    return count_tokens(tokenizer, caption) + _NUM_SPECIAL_TOKENS
