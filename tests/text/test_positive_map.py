import numpy as np
import pytest
import torch

from glip_d2.text import create_positive_map, load_tokenizer, span_to_token_range, tokenize


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("bert-base-uncased")


@pytest.mark.parametrize("case", ["detection", "grounding"])
def test_positive_map_matches_official(tokenizer, parity_npz, case):
    caption = str(parity_npz[f"{case}_caption"])
    spans = parity_npz[f"{case}_char_spans"].tolist()
    positive_map = create_positive_map(tokenize(tokenizer, [caption]), [[s] for s in spans])
    assert positive_map.dtype == torch.bool and positive_map.shape == (len(spans), 256)
    np.testing.assert_array_equal(positive_map.numpy(), parity_npz[f"{case}_positive_map"])


def test_official_space_fallbacks(tokenizer):
    caption = "a red  car"  # a span may start or end on spaces, as official prompts do
    encoded = tokenize(tokenizer, [caption])
    assert span_to_token_range(encoded, (1, 5)) == (2, 2)  # " red " -> "red"
    assert span_to_token_range(encoded, (6, 10)) == (3, 3)  # " car"
    positive_map = create_positive_map(encoded, [[(0, 1), (7, 10)], [(2, 5)]], max_len=8)
    assert positive_map.tolist() == [
        [False, True, False, True, False, False, False, False],
        [False, False, True, False, False, False, False, False],
    ]


def test_batch_index_selects_the_caption(tokenizer):
    encoded = tokenize(tokenizer, ["a cat", "one big dog"], max_length=8)
    positive_map = create_positive_map(encoded, [[(4, 11)]], max_len=8, batch_index=1)
    assert positive_map.nonzero()[:, 1].tolist() == [2, 3]


def test_positive_map_errors(tokenizer):
    caption = "a cat on a mat"
    encoded = tokenize(tokenizer, [caption], max_length=16)
    with pytest.raises(ValueError, match=r"\[10, 30\).*outside its caption of 14 characters"):
        create_positive_map(encoded, [[(10, 30)]], caption=caption)
    with pytest.raises(ValueError, match=r"\(20, 25\) of label #0 maps to no token"):
        create_positive_map(encoded, [[(20, 25)]])
    with pytest.raises(ValueError, match="Label #1 has no character span"):
        create_positive_map(encoded, [[(2, 5)], []])
    with pytest.raises(ValueError, match=r"\(5, 5\).*0 <= start < end"):
        create_positive_map(encoded, [[(5, 5)]])
    truncated = tokenize(tokenizer, ["cat " * 20 + "dog"], max_length=8)
    with pytest.raises(ValueError, match="truncation at 8 tokens"):
        create_positive_map(truncated, [[(80, 83)]], max_len=8)
    with pytest.raises(ValueError, match="past max_len=4"):
        create_positive_map(encoded, [[(11, 14)]], max_len=4)
