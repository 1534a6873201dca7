import numpy as np
import pytest
import torch

from glip_d2.text import load_tokenizer, packaged_model_dir, tokenize


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("bert-base-uncased")


def test_bert_base_uncased_is_fast_with_real_vocab(tokenizer):
    assert tokenizer.is_fast
    assert len(tokenizer) == 30522
    ids = tokenizer.convert_tokens_to_ids(["[PAD]", "[CLS]", "[SEP]", "[MASK]", "person", "car"])
    assert ids == [0, 101, 102, 103, 2711, 2482]
    assert load_tokenizer("bert-base-uncased") is tokenizer  # cached per name


def test_minilm_and_local_dir_give_the_same_ids(tokenizer):
    caption = "A man in a red shirt, left of the Café."
    expected = tokenizer(caption)["input_ids"]
    assert load_tokenizer("minilm")(caption)["input_ids"] == expected
    assert load_tokenizer(str(packaged_model_dir()))(caption)["input_ids"] == expected


def test_unknown_tokenizer_fails_offline_with_advice():
    with pytest.raises(OSError, match="no-such-org/no-such-tokenizer.*local directory"):
        load_tokenizer("no-such-org/no-such-tokenizer")


@pytest.mark.parametrize("case", ["detection", "grounding"])
def test_tokenize_matches_official(tokenizer, parity_npz, case):
    encoded = tokenize(tokenizer, [str(parity_npz[f"{case}_caption"])])
    assert encoded["input_ids"].dtype == torch.int64
    np.testing.assert_array_equal(encoded["input_ids"].numpy(), parity_npz[f"{case}_input_ids"])
    np.testing.assert_array_equal(
        encoded["attention_mask"].numpy(), parity_npz[f"{case}_attention_mask"]
    )
    num_tokens = int(parity_npz[f"{case}_num_tokens"])
    assert encoded.tokens(0)[:num_tokens] == [str(t) for t in parity_npz[f"{case}_tokens"]]


def test_tokenize_padding_truncation_and_errors(tokenizer):
    encoded = tokenize(tokenizer, ["a cat", "a dog on a mat"], max_length=16, pad_to_max=False)
    assert encoded["input_ids"].shape == (2, 7)
    assert encoded["attention_mask"].sum(1).tolist() == [4, 7]
    long = tokenize(tokenizer, ["cat " * 300], max_length=32)
    assert long["input_ids"].shape == (1, 32) and long["input_ids"][0, -1].item() == 102
    assert tokenize(tokenizer, "a cat", max_length=8)["input_ids"].shape == (1, 8)
    with pytest.raises(ValueError, match=r"Caption #1 is empty"):
        tokenize(tokenizer, ["a cat", "  "])
    with pytest.raises(ValueError, match="no captions"):
        tokenize(tokenizer, [])
