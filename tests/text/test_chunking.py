import logging

import pytest

from glip_d2.text import PromptChunk, chunk_vocabulary, load_tokenizer, tokenize

SYNTHETIC_LVIS = [f"object_{i}" for i in range(1203)]  # 1203 names like LVIS v1


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("bert-base-uncased")


def _num_tokens(tokenizer, caption):
    return int(
        tokenize(tokenizer, [caption], max_length=10_000, pad_to_max=False)["input_ids"].shape[1]
    )


def _check_partition(chunks, names):
    label_ids = [i for chunk in chunks for i in chunk.label_ids]
    assert label_ids == list(range(len(names)))  # every name exactly once, in order
    for chunk in chunks:
        assert [chunk.caption[s:e] for s, e in chunk.spans] == [
            names[i].replace("_", " ") for i in chunk.label_ids
        ]


def test_fixed_chunks_like_official_lvis(tokenizer):
    chunks = chunk_vocabulary(SYNTHETIC_LVIS, tokenizer, chunk_size=40)
    assert len(chunks) == 31
    assert [len(c.label_ids) for c in chunks] == [40] * 30 + [3]
    assert chunks[0].caption.startswith("object 0. object 1. object 2")
    assert isinstance(chunks[0], PromptChunk)
    _check_partition(chunks, SYNTHETIC_LVIS)
    # without a tokenizer: the same grouping, no token check
    assert [c.label_ids for c in chunk_vocabulary(SYNTHETIC_LVIS, None, 40)] == [
        c.label_ids for c in chunks
    ]


def test_auto_chunks_pack_to_the_token_budget(tokenizer):
    chunks = chunk_vocabulary(SYNTHETIC_LVIS, tokenizer, chunk_size=0, max_len=256)
    _check_partition(chunks, SYNTHETIC_LVIS)
    lengths = [_num_tokens(tokenizer, c.caption) for c in chunks]
    assert max(lengths) <= 256
    assert (
        min(lengths[:-1]) >= 256 - 4
    )  # greedy: the next name ("object N." = 4 tokens) did not fit
    assert len(chunks) < 31


def test_fixed_chunk_that_overflows_is_split(tokenizer):
    long_names = [f"very long category name number {i} with extra words" for i in range(40)]
    chunks = chunk_vocabulary(long_names, tokenizer, chunk_size=40, max_len=64)
    assert len(chunks) > 1
    assert [i for c in chunks for i in c.label_ids] == list(range(40))
    assert all(_num_tokens(tokenizer, c.caption) <= 64 for c in chunks)


def test_unicode_names(tokenizer):
    names = ["crème brûlée", "日本酒", "jalapeño", "Ærøskøbing_ferry"]
    chunks = chunk_vocabulary(names, tokenizer, chunk_size=0)
    assert len(chunks) == 1
    assert chunks[0].caption == "crème brûlée. 日本酒. jalapeño. ærøskøbing ferry"
    assert [chunks[0].caption[s:e] for s, e in chunks[0].spans][1] == "日本酒"


def test_chunking_errors(tokenizer, caplog):
    with pytest.raises(ValueError, match="empty vocabulary"):
        chunk_vocabulary([], tokenizer)
    with pytest.raises(ValueError, match=r"#1 \('\(misc\)'\) is empty"):
        chunk_vocabulary(["cat", "(misc)"], tokenizer)
    with pytest.raises(ValueError, match=r"repeats names.*'cat': \[0, 2\]"):
        chunk_vocabulary(["cat", "dog", "cat"], tokenizer)
    with pytest.raises(ValueError, match=r"#1 \('\\x07'\) yields no token"):
        chunk_vocabulary(["cat", "\x07"], tokenizer)
    with pytest.raises(ValueError, match=r"#0 \('giant.*more than a prompt of max_len=16"):
        chunk_vocabulary(["giant " * 20, "cat"], tokenizer, chunk_size=0, max_len=16)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        chunk_vocabulary(["cat"], None, chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size must be >= 0"):
        chunk_vocabulary(["cat"], tokenizer, chunk_size=-1)


def test_names_equal_after_cleaning(tokenizer, caplog):
    names = ["bow_(weapon)", "bow_(decorative_ribbons)", "arrow"]
    with caplog.at_level(logging.WARNING):
        chunks = chunk_vocabulary(names, tokenizer)  # LVIS v1 has such pairs: kept, warned
    assert chunks[0].caption == "bow. bow. arrow"
    assert "'bow': ['bow_(weapon)', 'bow_(decorative_ribbons)']" in caplog.text
    with pytest.raises(ValueError, match="same prompt text after clean_name.*'bow'"):
        chunk_vocabulary(names, tokenizer, strict_duplicates=True)


@pytest.mark.parametrize("entry, kind", [(5, "int"), (b"cat", "bytes"), (None, "NoneType")])
def test_a_non_string_name_is_named_as_such_not_as_empty(entry, kind):
    with pytest.raises(ValueError, match=rf"Vocabulary name #1 \({entry!r}\) is a {kind}, not a str"):
        chunk_vocabulary(["cat", entry])


def test_unordered_or_keyed_containers_are_refused():
    # list() of a set has an arbitrary order and of a dict its keys, while label ids index the
    # vocabulary: both would silently mislabel detections.
    with pytest.raises(ValueError, match="set, whose order is arbitrary"):
        chunk_vocabulary({"cat", "dog"})
    with pytest.raises(ValueError, match="mapping"):
        chunk_vocabulary({"cat": "a pet", "dog": "a pet"})
