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
