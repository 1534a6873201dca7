"""Class names as real datasets spell them, from the prompt to per-class scores and back."""

import random
import re

import pytest
import torch

from glip_d2.text import (
    aggregate_token_scores,
    build_training_prompt,
    chunk_vocabulary,
    clean_name,
    create_positive_map,
    load_tokenizer,
    tokenize,
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("bert-base-uncased")


# LVIS spellings (underscores, parentheses, capitals), a ". " inside a name, accents, unicode
# that lower-casing lengthens ("İ"), runs of spaces, CJK, a name that is [UNK].
AWKWARD_NAMES = [
    "st. bernard",
    "bow_(weapon)",
    "bow_(decorative_ribbons)",
    "Band_Aid",
    "crème brûlée",
    "İstanbul souvenir",
    "  hot   dog ",
    "日本 doll",
    "🍎",
    "x² sign",
]


@pytest.mark.parametrize("chunk_size", [3, 0])
def test_each_awkward_name_scores_only_its_own_label(tokenizer, chunk_size):
    """The round trip: names -> prompts -> positive maps -> label scores. Scoring exactly one
    label's tokens must give that label (and only it) the top score, in every chunk."""
    chunks = chunk_vocabulary(AWKWARD_NAMES, tokenizer, chunk_size=chunk_size, max_len=24)
    assert sorted(i for c in chunks for i in c.label_ids) == list(range(len(AWKWARD_NAMES)))
    for chunk in chunks:
        tokenized = tokenize(tokenizer, [chunk.caption], 24, pad_to_max=False)
        pmap = create_positive_map(tokenized, [[s] for s in chunk.spans], 24, caption=chunk.caption)
        for row, label in enumerate(chunk.label_ids):
            scores = pmap[row, : tokenized["input_ids"].shape[1]].float()[None]  # (1, T)
            label_scores = aggregate_token_scores(scores, pmap, "mean")[0]
            assert label_scores[row] == 1.0, (AWKWARD_NAMES[label], chunk.caption)
            others = [r for r in range(len(chunk.label_ids)) if r != row]
            assert all(label_scores[r] < 1.0 for r in others), (AWKWARD_NAMES[label], chunk.caption)


LVIS_LIKE = {0: "bow_(weapon)", 1: "bow_(decorative_ribbons)", 2: "cat", 3: "Car", 4: "car"}


@pytest.mark.parametrize("seed", range(4))
def test_a_negative_that_reads_like_a_positive_is_left_out(seed):
    # All negatives: before, "bow" and "car" each appeared twice, one of them a negative.
    caption, spans = build_training_prompt(
        LVIS_LIKE, [0, 4], rng=random.Random(seed), num_negatives=-1
    )
    assert sorted(caption.split(". ")) == ["bow", "car", "cat"]
    assert set(spans) == {0, 2, 4}
    assert caption[slice(*spans[0])] == "bow" and caption[slice(*spans[4])] == "car"


def test_positives_that_read_the_same_share_one_span(tokenizer):
    caption, spans = build_training_prompt(
        LVIS_LIKE, [0, 1, 3, 4], rng=random.Random(0), num_negatives=-1, tokenizer=tokenizer
    )
    assert sorted(caption.split(". ")) == ["bow", "car", "cat"]
    assert spans[0] == spans[1] and spans[3] == spans[4]
    # each box still gets a non-empty positive map: its class's words
    tokenized = tokenize(tokenizer, [caption], 32, pad_to_max=False)
    pmap = create_positive_map(tokenized, [[spans[c]] for c in (0, 1, 3, 4)], 32, caption=caption)
    assert torch.equal(pmap[0], pmap[1]) and torch.equal(pmap[2], pmap[3])
    assert pmap.sum(1).tolist() == [1, 1, 1, 1]


def test_names_with_the_same_tokens_are_named_once(tokenizer):
    # The uncased tokenizer strips accents, and every emoji is [UNK]: same ids, same words.
    names = {0: "café", 1: "cafe", 2: "🍎", 3: "🍌", 4: "dog"}
    caption, spans = build_training_prompt(
        names, [0, 2], rng=random.Random(0), num_negatives=-1, tokenizer=tokenizer
    )
    assert set(spans) == {0, 2, 4}
    assert sorted(caption.split(". ")) == sorted(["café", "🍎", "dog"])


def test_a_name_longer_than_the_token_budget_is_an_error_not_silently_dropped(tokenizer):
    # Before: category 1 was left out of every caption (its boxes dropped) as long as another
    # name fit, so it was never trained, while the test vocabulary refuses it.
    names = {0: "dog", 1: " ".join(["word"] * 20), 2: "cat"}
    with pytest.raises(ValueError, match=r"Category 1 .* is 20 tokens: .* does not fit max_len=16"):
        build_training_prompt(names, [1, 0], rng=random.Random(0), tokenizer=tokenizer, max_len=16)
    with pytest.raises(ValueError, match=r"Category 1 .* is 20 tokens"):  # as a negative
        build_training_prompt(
            names, [0], rng=random.Random(0), num_negatives=-1, tokenizer=tokenizer, max_len=16
        )
    # names that fit alone but not together are still dropped by priority, as before
    caption, spans = build_training_prompt(
        {0: "dog", 2: "cat"}, [0, 2], rng=random.Random(0), tokenizer=tokenizer, max_len=3
    )
    assert len(spans) == 1 and caption in ("dog", "cat")


def _official_clean_name(name):
    """The official GLIP clean_name (maskrcnn_benchmark/engine/inference.py), for comparison."""
    return re.sub("  ", " ", re.sub("_", " ", re.sub(r"\(.*\)", "", name)))


@pytest.mark.parametrize(
    "name",
    [
        "hot\x0bdog",
        "hot\x0cdog",
        "hot\x1fdog",
        "hot\x85dog",
        "bow_(weapon)",
        "a_(b)_c",
        "hot\u2028dog",
    ],
)
def test_clean_name_keeps_the_official_token_ids(tokenizer, name):
    """clean_name's extra whitespace handling must be invisible to the uncased tokenizer: the
    control characters Python calls whitespace are dropped by BERT, not word breaks."""
    ids = tokenizer(clean_name(name), add_special_tokens=False)["input_ids"]
    assert ids == tokenizer(_official_clean_name(name), add_special_tokens=False)["input_ids"]


def test_the_fixed_full_vocabulary_prompt_still_names_every_category(tokenizer):
    """Prompt tuning trains on one prompt, all classes in label order, which must be the test
    prompt (chunk_vocabulary keeps "bow" twice): the same caption whatever the positives."""
    captions = set()
    for positives in ([0], [1], [3, 4], []):
        caption, spans = build_training_prompt(
            LVIS_LIKE,
            positives,
            rng=random.Random(0),
            shuffle=False,
            num_negatives=-1,
            tokenizer=tokenizer,
        )
        captions.add(caption)
        assert sorted(spans) == list(range(5))
    (chunk,) = chunk_vocabulary(list(LVIS_LIKE.values()), tokenizer, chunk_size=0)
    assert captions == {chunk.caption} == {"bow. bow. cat. car. car"}
