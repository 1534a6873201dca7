"""RegionCLIP's concept pool: the noun phrases of a caption corpus, normalised and counted."""

import re
from collections import Counter
from typing import Iterable, List

from ..nlp import find_noun_phrases

__all__ = ["extract_concepts", "build_concept_pool", "read_concept_file", "write_concept_file"]

# Relations that join two noun phrases; the simple phrase splitter (no spaCy) keeps them inside
# one phrase ("a cat on the sofa"). Longer alternatives first. Only free-standing words break
# a phrase: not the "in"/"of"/"on" inside hyphenated compounds ("mother-in-law", "on-off switch").
_BREAKS = re.compile(
    r"(?<![\w'-])(?:to the left of|to the right of|in front of|next to|on top of|"
    r"of|with|on|in|at|near|above|below|under|behind|beside|between|showing|holding|and)"
    r"(?![\w'-])",
    re.IGNORECASE,
)
_LEADING = {
    "a",
    "an",
    "the",
    "some",
    "this",
    "that",
    "these",
    "those",
    "his",
    "her",
    "its",
    "their",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "several",
    "many",
    "few",
}
# Caption boilerplate that names the picture, not a region in it.
_NOT_CONCEPTS = {"photo", "picture", "image", "view", "scene", "close up", "closeup", "shot"}
# The nouns of the relations above ("to the left of", "in front of", "on top of"): spaCy makes
# them noun chunks of their own ("the left"), which name a place, not a region's content.
_NOT_CONCEPTS |= {"left", "right", "front", "top"}


def _normalise(text: str) -> str:
    # Stray punctuation ("a cat - on a mat") is no word of a concept.
    words = [w for w in re.sub(r"[^\w\s'-]", " ", text.lower()).split() if re.search(r"\w", w)]
    while words and (words[0] in _LEADING or words[0].isdigit()):
        words = words[1:]
    return " ".join(words)


def extract_concepts(caption: str, backend: str = "auto") -> List[str]:
    """Concepts named by one caption, in caption order, without repeats.

    Noun phrases come from :func:`glip_d2.nlp.find_noun_phrases` (spaCy noun chunks, or the
    comma/period/"and" split); each is cut at relation words ("of", "on", "next to", ...),
    lower-cased, stripped of leading articles, numbers and quantifiers, and dropped when it only
    names the picture ("photo", "image", ...) or a relation's place ("left", "front", ...).

    Args:
        caption: free text.
        backend: noun-phrase backend of `glip_d2.nlp` ("auto", "spacy", "simple").

    Returns:
        e.g. "Two dogs and a cat on the sofa." -> ["dogs", "cat", "sofa"].
    """
    out: List[str] = []
    for phrase in find_noun_phrases(caption, backend):
        for piece in _BREAKS.split(phrase.text):
            concept = _normalise(piece)
            if concept and concept not in _NOT_CONCEPTS and concept not in out:
                out.append(concept)
    return out


def build_concept_pool(
    captions: Iterable[str], max_concepts: int = 0, min_count: int = 1, backend: str = "auto"
) -> List[str]:
    """The concept pool of a corpus, most frequent first (ties alphabetical).

    Args:
        captions: the corpus.
        max_concepts: keep at most this many (0 = all).
        min_count: drop concepts seen in fewer captions.
        backend: noun-phrase backend.

    Raises:
        ValueError: if no concept is found.
    """
    counts = Counter()
    for caption in captions:
        counts.update(extract_concepts(caption, backend))
    pool = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
    if max_concepts > 0:
        pool = pool[:max_concepts]
    if not pool:
        raise ValueError("No concept found in the captions; check the corpus (or min_count).")
    return pool


def read_concept_file(path: str) -> List[str]:
    """One concept per line, stripped; blank lines and comment lines (starting with '#', after
    any leading spaces) are skipped. A '#' later in a line is part of the concept."""
    with open(path, encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]


def write_concept_file(path: str, concepts: List[str]) -> None:
    """Write `concepts` one per line, as :func:`read_concept_file` reads them back.

    Raises:
        ValueError: for a concept that would not read back as itself (blank, with a line break
            or surrounding spaces, or starting with '#', which reads as a comment); nothing is
            written then.
    """
    for i, c in enumerate(concepts):
        if not c.strip() or c != c.strip() or "\n" in c or "\r" in c or c.startswith("#"):
            raise ValueError(
                f"Concept {i} {c!r} would not read back from {path} (one stripped concept per "
                "line; blank lines and lines starting with '#' are skipped); remove or rename it."
            )
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(concepts) + "\n")
