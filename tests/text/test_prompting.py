"""PromptingMixin.set_vocabulary: bad vocabularies are refused before list() loses their shape."""

import pytest

from glip_d2.modeling.meta_arch.prompting import PromptingMixin
from glip_d2.text import load_tokenizer


class _Prompter(PromptingMixin):
    def __init__(self):
        self.tokenizer = load_tokenizer("bert-base-uncased")
        self.test_chunk_size, self.max_query_len, self.separator = 40, 256, ". "
        self._init_prompting(None)


@pytest.mark.parametrize(
    "vocabulary, message",
    [
        ("person", "single string 'person'"),
        ({"cat", "dog"}, "whose order is arbitrary"),
        ({"cat": "a pet"}, "mapping"),
    ],
)
def test_set_vocabulary_refuses_a_string_set_or_mapping_and_keeps_the_old_one(vocabulary, message):
    model = _Prompter()
    model.set_vocabulary(["cat", "dog"])
    with pytest.raises((TypeError, ValueError), match=message):
        model.set_vocabulary(vocabulary)
    assert model.vocabulary == ["cat", "dog"]
    assert [c.caption for c in model._chunks] == ["cat. dog"]


def test_set_vocabulary_accepts_a_tuple_and_a_generator():
    model = _Prompter()
    model.set_vocabulary(("cat", "dog"))
    assert model.vocabulary == ["cat", "dog"]
    model.set_vocabulary(n for n in ["cow", "pig"])
    assert [c.caption for c in model._chunks] == ["cow. pig"]


def test_a_caption_without_phrase_spans_is_not_grounded_and_says_so(caplog):
    """A hand-made input with a caption but no phrase spans is detected with the vocabulary; the
    caption being ignored is said once, with what to pass instead."""
    model = _Prompter()
    model.set_vocabulary(["cat", "dog"])
    with caplog.at_level("WARNING", logger="glip_d2"):
        prompts, labels = model._prompts_for({"caption": "a cat on a mat"})
        model._prompts_for({"caption": "a dog"})
    assert [p[0] for p in prompts] == ["cat. dog"] and labels == 2
    assert caplog.text.count("the caption is not used") == 1 and "phrase_spans" in caplog.text
    grounded, n = model._prompts_for({"caption": "a cat", "phrase_spans": [[[2, 5]]]})
    assert grounded == [("a cat", [[(2, 5)]], [0])] and n == 1


def test_phrase_spans_in_any_array_form_and_bad_ones_are_clear_errors():
    import numpy as np
    import torch

    from glip_d2.modeling.meta_arch.prompting import normalise_phrase_spans

    expected = [[(0, 3), (8, 11)], [(4, 7), (12, 15)]]
    for spans in (expected, np.array(expected), torch.tensor(expected)):
        assert normalise_phrase_spans(spans) == expected
    assert normalise_phrase_spans(np.array([[0, 3], [4, 7]])) == [[(0, 3)], [(4, 7)]]
    for bad in ([[0, 3, 5]], [["a", "b"]], [5]):
        with pytest.raises(ValueError, match=r"phrase_spans must be one \[start, end\]"):
            normalise_phrase_spans(bad)
