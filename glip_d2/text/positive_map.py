"""Positive maps: which tokens of a tokenized caption belong to each label (class or phrase)."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

from ._torch import require_torch, torch  # torch is None where not installed
from .spans import validate_spans

__all__ = ["span_to_token_range", "create_positive_map"]


def _first_token(tokenized, batch_index: int, char_indices) -> Optional[int]:
    for char_index in char_indices:
        # Negative indices would wrap around (or overflow in the Rust binding); the official code
        # swallowed that with a bare except.
        if char_index < 0:
            continue
        token = tokenized.char_to_token(batch_index, char_index)
        if token is not None:
            return token
    return None


def span_to_token_range(
    tokenized, span: Tuple[int, int], batch_index: int = 0
) -> Optional[Tuple[int, int]]:
    """The first and last token (inclusive) covering a character span.

    Exactly the official lookup: ``char_to_token(start)``, falling back to ``start + 1`` and
    ``start + 2`` when it lands on a space, and ``char_to_token(end - 1)`` falling back to
    ``end - 2`` and ``end - 3``.

    Args:
        tokenized: ``BatchEncoding`` from a fast tokenizer.
        span: ``[start, end)`` character offsets into the caption.
        batch_index: which caption of the batch.

    Returns:
        ``(first, last)`` token indices, or None when either end maps to no token (whitespace
        only, or cut off by truncation). ``first > last`` is possible for degenerate spans.
    """
    start, end = int(span[0]), int(span[1])
    first = _first_token(tokenized, batch_index, (start, start + 1, start + 2))
    last = _first_token(tokenized, batch_index, (end - 1, end - 2, end - 3))
    if first is None or last is None:
        return None
    return first, last


def create_positive_map(
    tokenized,
    spans_per_label: Sequence[Sequence[Tuple[int, int]]],
    max_len: int = 256,
    batch_index: int = 0,
    *,
    caption: Optional[str] = None,
) -> torch.Tensor:
    """Boolean label-to-token map, the official ``create_positive_map`` without normalisation.

    Row ``i`` is True at every token of every span of label ``i``. The official map is this one
    divided by its row sums; callers normalise when they need that.

    Args:
        tokenized: ``BatchEncoding`` from a fast tokenizer (see :func:`tokenize`).
        spans_per_label: for each label, its ``[start, end)`` character spans in the caption.
        max_len: width of the map (MAX_QUERY_LEN).
        batch_index: which caption of the batch the spans refer to.
        caption: the caption text; when given, spans are also checked to lie inside it (without
            it, a span past the end may still hit a token through the official fallbacks).

    Returns:
        ``torch.bool`` tensor of shape ``(len(spans_per_label), max_len)``.

    Raises:
        ValueError: if a label has no span, a span is malformed or outside ``caption``, or a
            span maps to no token (whitespace only, or cut off by truncation).
    """
    require_torch("create_positive_map")
    positive_map = torch.zeros((len(spans_per_label), max_len), dtype=torch.bool)
    for label, spans in enumerate(spans_per_label):
        if len(spans) == 0:
            raise ValueError(
                f"Label #{label} has no character span; give every label at least one "
                "[start, end) span."
            )
        if caption is not None:
            spans = validate_spans(caption, spans)
        for span in spans:
            if len(span) != 2 or int(span[0]) >= int(span[1]) or int(span[0]) < 0:
                raise ValueError(
                    f"Span {tuple(span)!r} of label #{label} is not a [start, end) pair with "
                    "0 <= start < end."
                )
            token_range = span_to_token_range(tokenized, span, batch_index)
            if token_range is None or token_range[0] > token_range[1]:
                raise ValueError(
                    f"Span {tuple(span)!r} of label #{label} maps to no token: it is whitespace, "
                    "lies outside the caption, or was cut off by truncation at "
                    f"{len(tokenized['input_ids'][batch_index])} tokens. Fix the span or shorten "
                    "the caption."
                )
            first, last = token_range
            if last >= max_len:
                raise ValueError(
                    f"Span {tuple(span)!r} of label #{label} reaches token {last}, past "
                    f"max_len={max_len}; tokenize with max_length <= max_len."
                )
            positive_map[label, first : last + 1] = True
    return positive_map
