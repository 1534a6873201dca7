"""Character spans in captions: validation, and remapping when the caption text is edited.

A span is a ``[start, end)`` pair of character offsets, as in MDETR's ``tokens_positive``.
"""

import re
from typing import List, Sequence, Tuple

__all__ = ["validate_spans", "mentions_left_right", "swap_left_right"]

Span = Tuple[int, int]

_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)
# By first letter: Unicode case-insensitive matching also takes "rıght" (dotless i) and "RİGHT"
# (dotted capital I, which lower() makes six characters), so the match's lower() is no key.
_SWAP = {"l": "right", "r": "left"}


def _where(image_id) -> str:
    return "" if image_id is None else f" of image {image_id!r}"


def validate_spans(caption: str, spans: Sequence[Sequence[int]], image_id=None) -> List[Span]:
    """Check that spans are ``[start, end)`` pairs inside ``caption`` and return them as tuples.

    Args:
        caption: the caption the spans point into.
        spans: ``[start, end)`` character spans (lists, tuples or integer arrays).
        image_id: named in error messages, to find the bad annotation.

    Returns:
        The spans as ``(start, end)`` tuples of Python ints.

    Raises:
        ValueError: if a span is not a pair of integers with ``0 <= start < end <= len(caption)``.
    """
    checked = []
    for span in spans:
        try:
            start, end = span
            if int(start) != start or int(end) != end:
                raise TypeError
            start, end = int(start), int(end)
        except (TypeError, ValueError, OverflowError):  # int(inf) overflows
            raise ValueError(
                f"Span {span!r}{_where(image_id)} is not a [start, end) pair of integers; "
                "tokens_positive must be a list of [start, end] character offsets."
            ) from None
        if not 0 <= start < end <= len(caption):
            raise ValueError(
                f"Span [{start}, {end}){_where(image_id)} lies outside its caption of "
                f"{len(caption)} characters ({caption!r}); spans must satisfy "
                "0 <= start < end <= len(caption). Fix the annotation's tokens_positive."
            )
        checked.append((start, end))
    return checked


def mentions_left_right(caption: str) -> bool:
    """Whether the caption contains the word "left" or "right" (any case)."""
    return _LEFT_RIGHT.search(caption) is not None


def _match_case(word: str, like: str) -> str:
    if like.isupper():
        return word.upper()
    if like[:1].isupper():
        return word.capitalize()
    return word


def swap_left_right(
    caption: str, spans_per_item: Sequence[Sequence[Span]]
) -> Tuple[str, List[List[Span]]]:
    """Swap the words "left" and "right" (for a horizontal flip) and move the spans with them.

    Whole words only ("leftover" and "rightmost" stay), case kept ("Left" -> "Right"). The two
    words differ in length, so every offset after a swapped word shifts; a span boundary that
    falls inside a swapped word snaps outward to that word's new boundary.

    Args:
        caption: the caption.
        spans_per_item: ``[start, end)`` spans, grouped (e.g. per annotation).

    Returns:
        ``(new_caption, new_spans_per_item)`` with the same grouping.
    """
    edits = []  # (old_start, old_end, new_start, new_end)
    pieces = []
    last = 0
    shift = 0
    for match in _LEFT_RIGHT.finditer(caption):
        word = match.group(0)
        new_word = _match_case(_SWAP[word[0].lower()], word)
        pieces.append(caption[last : match.start()])
        pieces.append(new_word)
        new_start = match.start() + shift
        edits.append((match.start(), match.end(), new_start, new_start + len(new_word)))
        shift += len(new_word) - len(word)
        last = match.end()
    if not edits:
        return caption, [list(map(tuple, spans)) for spans in spans_per_item]
    pieces.append(caption[last:])

    def move(offset: int, is_end: bool) -> int:
        delta = 0
        for old_start, old_end, new_start, new_end in edits:
            if offset >= old_end:
                delta = new_end - old_end
            elif offset > old_start:  # strictly inside a swapped word
                return new_end if is_end else new_start
            else:
                break
        return offset + delta

    new_spans = [[(move(s, False), move(e, True)) for s, e in spans] for spans in spans_per_item]
    return "".join(pieces), new_spans
