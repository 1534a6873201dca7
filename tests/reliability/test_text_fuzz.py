"""Issue 15, item 7 and the fuzz suite: random unicode (surrogates, control, zero-width,
combining characters; lengths 0-600; lists of 0-300 names) through the text utilities and the
predictor's vocabulary and caption paths. Every call succeeds with labels and spans that map to
tokens, or raises ValueError with a message; a call that raised leaves the model unchanged."""

import random
import time

import numpy as np
import pytest
import torch

from glip_d2.predictor import GLIPPredictor
from glip_d2.text import (
    build_detection_prompt,
    chunk_vocabulary,
    clean_name,
    create_positive_map,
    tokenize,
    validate_spans,
)
from tests.reliability.helpers import fast_tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

_ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJ", "0123456789", " " * 6, ".,;:!?-()'\"/&",
    "\t\n\r\x00\x01\x07\x1b\x7f\x85",  # control characters
    "\u200b\u200c\u200d\u2060\ufeff\u00ad\u200e\u200f",  # zero-width, BOM, soft hyphen, marks
    "\u0300\u0301\u0308\u0327\u20dd",  # combining marks
    "\ud800\udbff\udc00\udfff",  # lone surrogates
    "\u00a0\u2003\u3000",  # other spaces
    "éøßñçü", "日本語猫犬", "кошка", "🐱🚗👍🏽", "\U0001d400\U00010348",
]
_WORDS = ["cat", "red car", "traffic light", "person", "a", "dog on the left", "bicycle"]


def random_text(rng: random.Random, max_len: int = 600) -> str:
    n = min(int(rng.expovariate(1 / 12)), max_len) if rng.random() < 0.9 else rng.randint(0, max_len)
    pieces = []
    while sum(map(len, pieces)) < n:
        if rng.random() < 0.35:
            pieces.append(rng.choice(_WORDS) + " ")
        else:
            alphabet = rng.choice(_ALPHABETS)
            pieces.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))))
    return "".join(pieces)[:n] if n else ""


def random_names(rng: random.Random):
    n = min(int(rng.expovariate(1 / 6)), 300) if rng.random() < 0.95 else rng.randint(0, 300)
    return [rng.choice(_WORDS) + str(i) if rng.random() < 0.5 else random_text(rng, 40)
            for i in range(n)]


def _assert_maps(tokenizer, caption, spans, max_len):
    tokenized = tokenize(tokenizer, [caption], max_len, pad_to_max=False)
    positive = create_positive_map(tokenized, [[s] for s in spans], max_len=max_len)
    assert positive.any(dim=1).all()


@pytest.fixture(scope="module")
def pred():
    torch.manual_seed(0)
    cfg = fast_tiny_cfg()
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0
    return GLIPPredictor(cfg)


def _snapshot(model):
    return list(model.vocabulary or []), [(c.caption, list(c.spans), list(c.label_ids))
                                          for c in model._chunks or []]


def test_lone_surrogate_in_a_caption_is_a_value_error(pred):
    image = np.zeros((40, 60, 3), np.uint8)
    with pytest.raises(ValueError, match=r"lone surrogate U\+D800 at character 6"):
        pred(image, caption="a cat \ud800 on a mat", phrases=["cat"])
    with pytest.raises(ValueError, match="lone surrogate"):
        tokenize(pred.model.tokenizer, ["x\udfff"])


@pytest.mark.parametrize("name", ["\u200b\u200b\u200bcat", "cat\u200b\u200b\u200b",
                                  "\ufeff\ufeff\ufeffdog", "\x01\x02\x03bird", "\u200b"])
def test_invisible_characters_are_refused_at_set_vocabulary(pred, name):
    pred.set_vocabulary(["red circle", "blue square"])
    before = _snapshot(pred.model)
    with pytest.raises(ValueError, match=r"Vocabulary name #1 .*(no token|empty)"):
        pred(np.zeros((40, 60, 3), np.uint8), vocabulary=["person", name])
    assert _snapshot(pred.model) == before


def test_model_is_restored_when_inference_raises(pred, monkeypatch):
    pred.set_vocabulary(["red circle", "blue square"])
    before = _snapshot(pred.model)

    def broken(*args, **kwargs):
        raise ValueError("a failure inside the model")

    monkeypatch.setattr(pred.model, "inference", broken)
    with pytest.raises(ValueError, match="inside the model"):
        pred(np.zeros((40, 60, 3), np.uint8), vocabulary=["person", "car"])
    assert _snapshot(pred.model) == before


def test_fuzz_text_utilities_and_predictor_paths(pred):
    rng = random.Random(20240515)
    tokenizer, max_len = pred.model.tokenizer, pred.model.max_query_len
    start, counts = time.perf_counter(), {"ok": 0, "value_error": 0}
    for case in range(1200):
        kind = case % 4
        before = _snapshot(pred.model)
        try:
            if kind == 0:  # vocabulary through the predictor
                names = random_names(rng)
                labels = pred.set_vocabulary(names)
                assert labels == names and pred.model.vocabulary == names
                for chunk in pred.model._chunks:
                    _assert_maps(tokenizer, chunk.caption, chunk.spans, max_len)
            elif kind == 1:  # caption through the predictor (phrases found automatically)
                caption = random_text(rng)
                (extra,) = pred._grounding_inputs(caption, None, 1)
                assert extra["labels"] == [caption[s:e] for s, e in extra["phrase_spans"]]
                _assert_maps(tokenizer, caption, extra["phrase_spans"], max_len)
            elif kind == 2:  # text utilities on their own
                names = random_names(rng)
                chunks = chunk_vocabulary(names, tokenizer, chunk_size=rng.choice([0, 5, 40]),
                                          max_len=max_len)
                assert sorted(i for c in chunks for i in c.label_ids) == list(range(len(names)))
                for chunk in chunks:
                    _assert_maps(tokenizer, chunk.caption, chunk.spans, max_len)
                    for span, i in zip(chunk.spans, chunk.label_ids):
                        assert chunk.caption[span[0]:span[1]] == clean_name(names[i])
            else:  # prompts, spans and tokenization of random text
                names = [n for n in random_names(rng) if n.strip()][:20] or ["x"]
                caption, spans = build_detection_prompt(names)
                validate_spans(caption, spans)
                text = random_text(rng)
                spans = [(rng.randint(-2, len(text) + 2), rng.randint(-2, len(text) + 2))]
                validate_spans(text, spans)
                tokenize(tokenizer, [text], max_len)
            counts["ok"] += 1
        except ValueError as error:
            assert str(error), f"case {case}: ValueError without a message"
            assert _snapshot(pred.model) == before, f"case {case}: the model changed"
            counts["value_error"] += 1
    elapsed = time.perf_counter() - start
    assert sum(counts.values()) == 1200 and min(counts.values()) > 100, counts
    assert elapsed < 60, f"fuzzing took {elapsed:.0f} s"


def test_fuzz_full_predictor_calls(pred):
    """A few random vocabularies and captions through the whole model."""
    rng = random.Random(7)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    for case in range(16):
        before = _snapshot(pred.model)
        try:
            if case % 2:
                out = pred(image, vocabulary=random_names(rng)[:30])
            else:
                out = pred(image, caption=random_text(rng, 120))
            assert (out["instances"].pred_classes < len(out["labels"])).all()
        except ValueError as error:
            assert str(error) and _snapshot(pred.model) == before
