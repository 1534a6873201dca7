import random

import pytest

from glip_d2.text import build_training_prompt, load_tokenizer, tokenize

NAMES = {i: f"thing_{i}" for i in range(100)}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("bert-base-uncased")


def _check_spans(caption, spans):
    for category, (start, end) in spans.items():
        assert caption[start:end] == f"thing {category}"


def test_positives_and_negatives():
    caption, spans = build_training_prompt(
        NAMES, [3, 7, 7, 42], rng=random.Random(0), num_negatives=10
    )
    assert {3, 7, 42} <= set(spans)
    assert len(spans) == 13  # 3 positives + 10 sampled negatives
    assert caption.count(". ") == 12
    _check_spans(caption, spans)
    _, all_spans = build_training_prompt(NAMES, [3], rng=random.Random(0), num_negatives=-1)
    assert sorted(all_spans) == list(range(100))


def test_shuffle_depends_on_the_seed_and_no_shuffle_sorts():
    orders = {
        tuple(build_training_prompt(NAMES, [1, 2, 3], rng=random.Random(seed), num_negatives=5)[1])
        for seed in range(5)
    }
    assert len(orders) > 1
    _, spans = build_training_prompt(
        NAMES, [9, 1], rng=random.Random(0), shuffle=False, num_negatives=-1
    )
    assert list(spans) == list(range(100))
    caption, _ = build_training_prompt(
        NAMES, [9, 1], rng=random.Random(0), shuffle=False, num_negatives=0
    )
    assert caption == "thing 1. thing 9"


def test_caps_keep_positives_first(tokenizer):
    positives = [5, 6, 7]
    _, spans = build_training_prompt(
        NAMES, positives, rng=random.Random(1), num_negatives=50, max_categories=4
    )
    assert len(spans) == 4 and set(positives) <= set(spans)
    caption, spans = build_training_prompt(
        NAMES, positives, rng=random.Random(1), num_negatives=50, tokenizer=tokenizer, max_len=32
    )
    # "thing N" = 2 tokens, separator "." = 1 token: 2 + 3 * 10 - 1 = 31 <= 32 -> 10 names
    assert set(positives) <= set(spans) and len(spans) == 10
    assert (
        tokenize(tokenizer, [caption], max_length=64, pad_to_max=False)["input_ids"].shape[1] <= 32
    )
    _check_spans(caption, spans)
    # more positives than the budget holds: some positives are dropped, never more than fit
    _, spans = build_training_prompt(
        NAMES, list(range(30)), rng=random.Random(1), tokenizer=tokenizer, max_len=32
    )
    assert len(spans) == 10 and set(spans) <= set(range(30))


def test_empty_image_still_gets_a_prompt_and_errors():
    caption, spans = build_training_prompt(NAMES, [], rng=random.Random(0), num_negatives=0)
    assert len(spans) == 1 and caption == f"thing {next(iter(spans))}"
    with pytest.raises(ValueError, match=r"Positive category ids \[100\] are not in"):
        build_training_prompt(NAMES, [100], rng=random.Random(0))
    with pytest.raises(ValueError, match="no category names"):
        build_training_prompt({}, [], rng=random.Random(0))
    with pytest.raises(ValueError, match=r"Category 1 \('\(x\)'\) has an empty name"):
        build_training_prompt({0: "a", 1: "(x)"}, [1], rng=random.Random(0))


def test_no_name_fitting_the_token_budget_is_a_clear_error(tokenizer):
    names = {0: " ".join(["word"] * 30), 1: " ".join(["thing"] * 40)}
    with pytest.raises(ValueError, match=r"Category 0 .* is 30 tokens: with \[CLS\] and \[SEP\] it does not fit max_len=16"):
        build_training_prompt(names, [0], rng=random.Random(0), tokenizer=tokenizer, max_len=16)
