"""Detection prompts: category names joined into one caption, with each name's character span.

GLIP detects a fixed vocabulary by grounding it: the names become a caption such as
``"person. bicycle. car"`` and each class is scored through the tokens of its name. This module
builds that caption exactly as the official ``create_queries_and_maps`` does.
"""

import re
from typing import List, Sequence, Tuple

from .descriptions import as_description

__all__ = ["clean_name", "build_detection_prompt"]

# Greedy on purpose, like the official regex: "a_(b)_c_(d)" loses everything from "(b" to "d)".
_PARENTHESES = re.compile(r"\(.*\)")
# Whitespace as BERT's normaliser sees it: Python's \s less the control characters it calls
# whitespace (\x0b, \x0c, \x1c-\x1f, \x85), which BERT drops instead ("hot\x0bdog" is "hotdog").
_WHITESPACE = re.compile(r"[^\S\x0b\x0c\x1c-\x1f\x85]+")


def clean_name(name: str) -> str:
    """Turn a dataset category name into the words that go into a prompt.

    Follows the official GLIP ``clean_name``: the parenthesised part is removed
    (``"bow_(weapon)"`` -> ``"bow"``) and underscores become spaces. Two small additions, both
    invisible to an uncased BERT tokenizer (token ids are unchanged): runs of whitespace are
    collapsed and stripped (the official code can leave a trailing space), and the result is
    lower-cased character by character, as BERT's normaliser does (``str.lower`` would turn a
    word-final "Σ" into "ς", a different token than the "σ" BERT reads).

    Args:
        name: a category name, e.g. ``"traffic_light"`` or ``"Pan_(for_cooking)"``.

    Returns:
        The cleaned name; may be empty when the name was only a parenthesised remark.

    Raises:
        TypeError: if ``name`` is not a string.
    """
    if not isinstance(name, str):
        raise TypeError(f"clean_name expects a str, got {type(name).__name__} ({name!r}).")
    name = _PARENTHESES.sub("", name)
    name = name.replace("_", " ")
    return _lower_each_char(_WHITESPACE.sub(" ", name).strip())


def _lower_each_char(text: str) -> str:
    """Lower-case without context rules (the Greek final sigma), like Rust's per-char lowercase."""
    return "".join(char.lower() for char in text)


def build_detection_prompt(
    names: Sequence, separator: str = ". ", clean: bool = True
) -> Tuple[str, List[Tuple[int, int]]]:
    """Join category names into a detection caption.

    ``["person", "bicycle", "traffic_light"]`` gives ``"person. bicycle. traffic light"`` and the
    spans ``[(0, 6), (8, 15), (17, 30)]``: the separator goes between names only, as in the
    official ``create_queries_and_maps``. An entry may be a class description
    (``{"prefix": "a ", "name": "cat", "suffix": " on a sofa"}``, see
    :mod:`glip_d2.text.descriptions`): the caption gets ``prefix + name + suffix`` and the span
    covers the name only, as the official ``CAPTION_PROMPT``.

    Args:
        names: category names or descriptions, in label order.
        separator: text between two names (official ``DATASETS.SEPARATION_TOKENS``).
        clean: pass every name through :func:`clean_name` first.

    Returns:
        ``(caption, spans)`` where ``spans[i]`` is the ``[start, end)`` character span of
        ``names[i]`` in ``caption``.

    Raises:
        ValueError: if ``names`` is empty or a name is empty (after cleaning).
    """
    if isinstance(names, str):
        raise TypeError(
            f"build_detection_prompt expects a sequence of names, got the single string {names!r}; "
            "wrap it in a list."
        )
    if len(names) == 0:
        raise ValueError("build_detection_prompt got no names; pass at least one category name.")
    caption = ""
    spans: List[Tuple[int, int]] = []
    for i, entry in enumerate(names):
        description = as_description(entry, i)
        name = description.name
        text = clean_name(name) if clean else name
        if not text.strip():
            raise ValueError(
                f"Category name #{i} ({name!r}) is empty"
                f"{' after clean_name' if clean else ''}; give every category a non-empty name."
            )
        if i > 0:
            caption += separator
        caption += description.prefix
        start = len(caption)
        caption += text
        spans.append((start, len(caption)))
        caption += description.suffix
    return caption, spans
