"""Splitting a large test vocabulary (LVIS: 1203 names) into prompts that fit the token budget.

Official GLIP evaluates LVIS with ``TEST.CHUNKED_EVALUATION 40``: consecutive groups of 40 names,
one forward pass of the fusion head per group.
"""

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import AbstractSet, List, Mapping, Sequence, Tuple

from .descriptions import ClassDescription, as_description, entry_name
from .prompt import build_detection_prompt, clean_name
from .positive_map import span_to_token_range
from .tokenization import check_text, count_tokens, tokenize

__all__ = ["PromptChunk", "check_vocabulary_container", "chunk_vocabulary"]

logger = logging.getLogger(__name__)

# [CLS] and [SEP].
_NUM_SPECIAL_TOKENS = 2


@dataclass
class PromptChunk:
    """One detection prompt covering part of a vocabulary.

    Attributes:
        caption: the prompt text, e.g. ``"aerosol can. air conditioner"``.
        spans: ``[start, end)`` character span of each name in ``caption``.
        label_ids: for each span, the index of its name in the full vocabulary.
    """

    caption: str
    spans: List[Tuple[int, int]] = field(default_factory=list)
    label_ids: List[int] = field(default_factory=list)


def check_vocabulary_container(names) -> None:
    """Refuse what ``list()`` would silently misread as a vocabulary: a string (its letters), a
    mapping (its keys) or a set (an arbitrary order, while label ids index the vocabulary).

    Raises:
        TypeError: for a string.
        ValueError: for a mapping or a set.
    """
    if isinstance(names, str):
        raise TypeError(
            f"A vocabulary is a sequence of names, got the single string {names!r}; wrap it in a "
            "list."
        )
    if isinstance(names, Mapping):
        raise ValueError(
            f"The vocabulary is a mapping ({type(names).__name__}), which would be read as its "
            "keys; pass a list of names or of {prefix, name, suffix} descriptions."
        )
    if isinstance(names, AbstractSet):
        raise ValueError(
            f"The vocabulary is a {type(names).__name__}, whose order is arbitrary while label "
            "ids index the vocabulary; pass an ordered list, e.g. sorted(names)."
        )


def _check_names(names: Sequence, strict_duplicates: bool) -> List:
    """Validated entries with cleaned names: plain names stay strings, descriptions become
    :class:`ClassDescription` (their prefix and suffix untouched)."""
    check_vocabulary_container(names)
    if len(names) == 0:
        raise ValueError("chunk_vocabulary got an empty vocabulary; pass at least one name.")
    cleaned, plain = [], []
    for i, entry in enumerate(names):
        try:
            description = None if isinstance(entry, str) else as_description(entry, i)
        except TypeError:
            description = None
        name = description.name if description is not None else entry
        if isinstance(name, str):
            check_text(name, f"Vocabulary name #{i}")
        if description is not None:
            check_text(description.prefix + description.suffix, f"The description of #{i}")
        if not isinstance(name, str):
            raise ValueError(
                f"Vocabulary name #{i} ({entry!r}) is a {type(name).__name__}, not a str; give "
                "every class a name (str) or a {prefix, name, suffix} description."
            )
        if not clean_name(name):
            raise ValueError(
                f"Vocabulary name #{i} ({entry!r}) is empty after clean_name; give every class "
                "a non-empty name."
            )
        plain.append(name)
        if description is None:
            cleaned.append(clean_name(name))
        else:
            cleaned.append(ClassDescription(clean_name(name), description.prefix, description.suffix))
    names = plain
    cleaned_names = [entry_name(c) for c in cleaned]
    by_raw, by_clean = defaultdict(list), defaultdict(list)
    for i, (name, clean) in enumerate(zip(names, cleaned_names)):
        by_raw[name.strip()].append(i)
        by_clean[clean].append(i)
    raw_dups = {n: ids for n, ids in by_raw.items() if len(ids) > 1}
    if raw_dups:
        raise ValueError(
            f"The vocabulary repeats names (name: indices): {raw_dups}; every class needs its own "
            "name, remove the duplicates."
        )
    clean_dups = {n: [names[i] for i in ids] for n, ids in by_clean.items() if len(ids) > 1}
    if clean_dups:
        message = (
            f"Different vocabulary names become the same prompt text after clean_name: "
            f"{clean_dups}."
        )
        if strict_duplicates:
            raise ValueError(message + " Rename them so they can be told apart.")
        # LVIS v1 has five such pairs (bow, fish, octopus, pan, salmon); official GLIP keeps both
        # as separate labels at different positions of the prompt.
        logger.warning(message + " They stay separate labels, as in official GLIP.")
    return cleaned


def chunk_vocabulary(
    names: Sequence[str],
    tokenizer=None,
    chunk_size: int = 40,
    max_len: int = 256,
    separator: str = ". ",
    *,
    strict_duplicates: bool = False,
) -> List[PromptChunk]:
    """Split category names into detection prompts.

    Args:
        names: the vocabulary, in label order: names or class descriptions
            (``{prefix, name, suffix}``, see :mod:`glip_d2.text.descriptions`).
        tokenizer: a fast tokenizer; required when ``chunk_size == 0``. When given, every chunk
            is checked to fit ``max_len`` tokens ([CLS] and [SEP] included) and split further if
            it does not.
        chunk_size: names per chunk (official ``TEST.CHUNKED_EVALUATION``), or 0 to pack as many
            consecutive names as fit ``max_len`` tokens.
        max_len: token budget per prompt (MAX_QUERY_LEN).
        separator: text between names.
        strict_duplicates: also reject different names that are equal after :func:`clean_name`
            (by default they are logged and kept, since LVIS v1 has five such pairs).

    Returns:
        Chunks in vocabulary order; each name appears in exactly one chunk.

    Raises:
        ValueError: on an empty vocabulary, a mapping or set instead of a sequence, a name that
            is not a str, is empty or yields no token, a repeated name, a name longer than the
            token budget, or a negative ``chunk_size``.
        TypeError: if ``names`` is a single string.
    """
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0 (0 = as many as fit), got {chunk_size}.")
    if chunk_size == 0 and tokenizer is None:
        raise ValueError("chunk_size=0 packs names by token count and needs a tokenizer.")
    cleaned = _check_names(names, strict_duplicates)

    if tokenizer is None:
        groups = [list(range(i, i + chunk_size)) for i in range(0, len(names), chunk_size)]
        groups[-1] = [i for i in groups[-1] if i < len(names)]
    else:
        lengths = []
        for i, entry in enumerate(cleaned):
            n = count_tokens(tokenizer, _entry_text(entry))
            if n == 0:
                raise ValueError(f"Vocabulary name #{i} ({names[i]!r}) yields no token.")
            if n + _NUM_SPECIAL_TOKENS > max_len:
                raise ValueError(
                    f"Vocabulary name #{i} ({names[i]!r}) is {n} tokens, more than a prompt of "
                    f"max_len={max_len} holds; shorten the name or raise MAX_QUERY_LEN."
                )
            lengths.append(n)
        groups = _pack(lengths, count_tokens(tokenizer, separator), chunk_size, max_len)
        groups = [
            g
            for group in groups
            for g in _split_to_fit(group, cleaned, tokenizer, max_len, separator)
        ]

    chunks = []
    for group in groups:
        caption, spans = build_detection_prompt([cleaned[i] for i in group], separator, clean=False)
        chunks.append(PromptChunk(caption=caption, spans=spans, label_ids=list(group)))
    if tokenizer is not None:
        for chunk in chunks:
            _check_spans_map_to_tokens(chunk, names, tokenizer, max_len)
    return chunks


def _check_spans_map_to_tokens(chunk: PromptChunk, names, tokenizer, max_len: int) -> None:
    """Each name must cover tokens of its prompt, exactly as inference looks them up; a name
    that begins or ends with characters the tokenizer drops (zero-width, BOM, control
    characters, lone combining marks) may not, and would only fail at inference."""
    # lists, not tensors: the lookup needs no torch
    tokenized = tokenize(tokenizer, [chunk.caption], max_len, pad_to_max=False, return_tensors=None)
    for span, label in zip(chunk.spans, chunk.label_ids):
        tokens = span_to_token_range(tokenized, span)
        if tokens is None or tokens[0] > tokens[1]:
            raise ValueError(
                f"Vocabulary name #{label} ({names[label]!r}) maps to no token of its prompt: its "
                "first or last characters are ones the tokenizer drops (zero-width, BOM, control "
                "or lone combining characters). Remove them from the name."
            )


def _entry_text(entry) -> str:
    return entry if isinstance(entry, str) else entry.text(clean=False)


def _pack(lengths: List[int], sep_len: int, chunk_size: int, max_len: int) -> List[List[int]]:
    """Greedy grouping of consecutive names by estimated token count (names + separators)."""
    groups: List[List[int]] = []
    current: List[int] = []
    used = _NUM_SPECIAL_TOKENS
    for i, n in enumerate(lengths):
        extra = n + (sep_len if current else 0)
        full = chunk_size > 0 and len(current) == chunk_size
        if current and (full or used + extra > max_len):
            groups.append(current)
            current, used, extra = [], _NUM_SPECIAL_TOKENS, n
        current.append(i)
        used += extra
    groups.append(current)
    return groups


def _split_to_fit(group, cleaned, tokenizer, max_len, separator) -> List[List[int]]:
    """Exact check of a group's caption; halve it until each part fits (rarely needed)."""
    caption, _ = build_detection_prompt([cleaned[i] for i in group], separator, clean=False)
    if count_tokens(tokenizer, caption) + _NUM_SPECIAL_TOKENS <= max_len or len(group) == 1:
        return [group]
    mid = len(group) // 2
    return _split_to_fit(group[:mid], cleaned, tokenizer, max_len, separator) + _split_to_fit(
        group[mid:], cleaned, tokenizer, max_len, separator
    )
