"""The user journey of docs/transfer.md: describe the classes, tune, sample few-shot data."""
import pytest

from glip_d2.text import (
    ClassDescription,
    build_detection_prompt,
    create_positive_map,
    load_descriptions,
    load_tokenizer,
    packaged_model_dir,
    tokenize,
)


@pytest.mark.parametrize(
    "source",
    [
        '[{"prefix": "a", "name": "cigarette"}]',  # "acigarette"
        '{"red cross": "a red plus sign"}',  # a string value is the suffix: "red crossa red ..."
        '[{"name": "bus", "suffix": "es on a road"}]',  # "buses": one token, not "bus"
    ],
)
def test_a_description_glued_to_the_name_is_refused(tmp_path, source):
    """Context glued to the name changes the name's word pieces ("a" + "cigarette" is read as
    "ac ##iga ##ret ##te"), so the label's positive tokens would be other words' pieces."""
    path = tmp_path / "classes.json"
    path.write_text(source)
    with pytest.raises(ValueError, match=r"classes\.json.*space"):
        load_descriptions(str(path))
    with pytest.raises(ValueError, match="space"):
        load_descriptions(source)


def test_descriptions_separated_from_the_name_keep_its_word_pieces():
    tokenizer = load_tokenizer(packaged_model_dir())
    vocab = load_descriptions(
        '[{"prefix": "a ", "name": "cigarette"}, {"name": "red cross", "suffix": ", a plus sign"},'
        ' {"prefix": "(", "name": "bus", "suffix": ")"}, {"prefix": "sub-", "name": "marine"}]'
    )
    caption, spans = build_detection_prompt(vocab)
    tok = tokenize(tokenizer, [caption], 256, pad_to_max=False)
    pmap = create_positive_map(tok, [[s] for s in spans], max_len=256)
    words = tokenizer.convert_ids_to_tokens(tok["input_ids"][0])
    got = [[words[i] for i in row.nonzero()[:, 0]] for row in pmap]
    assert got == [["cigarette"], ["red", "cross"], ["bus"], ["marine"]]
    assert ClassDescription("cat", "a ", " on a sofa").text() == "a cat on a sofa"
