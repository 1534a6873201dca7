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
from .tokenization import count_tokens, token_ids

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
    used. Unlike the official code, the number of negatives is fixed (no CONTROL_PROB draw), a
    positive that does not fit is dropped from the caption (its boxes must be dropped too), and
    categories whose prompt reads the same (LVIS "bow_(weapon)" and "bow_(decorative_ribbons)"
    are both "bow"; with a tokenizer, the same token ids: "café" and "cafe", or two names that are
    both [UNK]) are named once: a positive shares that span, a negative is left out, so a box is
    never told that its own words name something absent. The exception is the whole vocabulary in
    label order (``shuffle=False``, ``num_negatives=-1``, no cap: the fixed prompt of prompt
    tuning), which stays the test prompt: every category named at its own, fixed position.

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
        ``[start, end)`` character span (the same span for positives that read the same).

    Raises:
        ValueError: if ``category_names`` is empty, a positive id is not in it, or a chosen
            name is empty after :func:`clean_name` or alone longer than ``max_len`` tokens.
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
    same_text: Dict[int, int] = {}
    if shuffle or num_negatives >= 0 or max_categories > 0:  # else: the fixed test prompt
        candidates, same_text = _name_each_text_once(
            candidates, set(positives), category_names, tokenizer
        )
    if tokenizer is not None:
        candidates = _fit_token_budget(candidates, category_names, tokenizer, max_len, separator)

    ordered = list(candidates)
    if shuffle:
        rng.shuffle(ordered)
    else:
        ordered.sort()
    caption, spans = build_detection_prompt([category_names[i] for i in ordered], separator)
    label_spans = dict(zip(ordered, spans))
    for category, named_by in same_text.items():
        if named_by in label_spans:
            label_spans[category] = label_spans[named_by]
    return caption, label_spans


def _name_each_text_once(
    candidates: List[int], positives, category_names, tokenizer
) -> Tuple[List[int], Dict[int, int]]:
    """``(candidates with one category per prompt text, positive -> earlier category of the same
    text)``; the text is compared as token ids when there is a tokenizer. Positives come first, so
    a positive is always named by a positive; a negative that reads like a positive would make the
    positive's boxes learn that their own words are absent."""
    first_of_text: Dict[object, int] = {}
    kept, same_text = [], {}
    for category in candidates:
        text = _entry_text(category_names[category])
        if tokenizer is not None:
            text = _token_ids(tokenizer, text)
        if text not in first_of_text:
            first_of_text[text] = category
            kept.append(category)
        elif category in positives:
            same_text[category] = first_of_text[text]
    return kept, same_text


def _fit_token_budget(
    candidates: List[int], category_names, tokenizer, max_len: int, separator: str
) -> List[int]:
    """Keep, in priority order, the names whose tokens still fit the budget."""
    sep_len = count_tokens(tokenizer, separator)
    kept: List[int] = []
    used = _NUM_SPECIAL_TOKENS
    for category in candidates:
        tokens = len(_token_ids(tokenizer, _entry_text(category_names[category])))
        if tokens + _NUM_SPECIAL_TOKENS > max_len:
            # Dropped like a name the budget has no room left for, its boxes would silently never
            # be trained (and the test vocabulary refuses it).
            _raise_too_long(category, category_names, tokens, max_len)
        extra = tokens + (sep_len if kept else 0)
        if used + extra <= max_len:
            kept.append(category)
            used += extra
    # The estimate is exact for separators that split words (". ", " "); check the real caption
    # and drop from the lowest priority in case a separator glues names together.
    while len(kept) > 1 and _caption_tokens(kept, category_names, tokenizer, separator) > max_len:
        kept.pop()
    return kept


def _raise_too_long(category: int, category_names, tokens: int, max_len: int) -> None:
    raise ValueError(
        f"Category {category} ({category_names[category]!r}) is {tokens} tokens: with [CLS] and "
        f"[SEP] it does not fit max_len={max_len} tokens, so it could never be prompted, nor its "
        "boxes trained. Shorten the name (or its class description) or raise "
        "MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN."
    )


def _entry_text(entry) -> str:
    """The prompt text of a name or description (hashable, for the token-count cache)."""
    return clean_name(entry) if isinstance(entry, str) else as_description(entry).text()


@functools.lru_cache(maxsize=1 << 16)
def _token_ids(tokenizer, text: str) -> Tuple[int, ...]:
    """:func:`~glip_d2.text.tokenization.token_ids`, cached: called for ~100 names per training
    image, and names repeat across images."""
    return token_ids(tokenizer, text)


def _caption_tokens(ids: List[int], category_names, tokenizer, separator: str) -> int:
    caption, _ = build_detection_prompt([category_names[i] for i in ids], separator)
    return count_tokens(tokenizer, caption) + _NUM_SPECIAL_TOKENS
