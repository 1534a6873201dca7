import pytest

from glip_d2.text import build_detection_prompt, clean_name


@pytest.mark.parametrize(
    "name, expected",
    [
        ("traffic_light", "traffic light"),
        ("bow_(weapon)", "bow"),  # official: parenthesised part removed (leaves no trailing space)
        ("Pan_(for_cooking)", "pan"),
        ("monitor_(computer_equipment) computer_monitor", "monitor computer monitor"),
        ("hot  dog", "hot dog"),
        ("Café_Crème", "café crème"),
        ("(only a remark)", ""),
    ],
)
def test_clean_name(name, expected):
    assert clean_name(name) == expected


def test_clean_name_rejects_non_strings():
    with pytest.raises(TypeError, match="str"):
        clean_name(3)


def test_detection_prompt_matches_official(parity_npz):
    names = [str(n) for n in parity_npz["detection_label_names"]]
    caption, spans = build_detection_prompt(names)
    assert caption == str(parity_npz["detection_caption"])
    assert caption == "person. bicycle. car. motorcycle. traffic light"
    assert spans == [tuple(s) for s in parity_npz["detection_char_spans"].tolist()]


def test_detection_prompt_separator_clean_and_unicode():
    caption, spans = build_detection_prompt(["hot_dog", "Crème brûlée", "日本 人形"], separator=" ")
    assert caption == "hot dog crème brûlée 日本 人形"
    assert [caption[s:e] for s, e in spans] == ["hot dog", "crème brûlée", "日本 人形"]
    raw, raw_spans = build_detection_prompt(["A_b"], clean=False)
    assert raw == "A_b" and raw_spans == [(0, 3)]


def test_detection_prompt_errors():
    with pytest.raises(ValueError, match="no names"):
        build_detection_prompt([])
    with pytest.raises(ValueError, match=r"#1 \('\(misc\)'\) is empty"):
        build_detection_prompt(["cat", "(misc)"])
    with pytest.raises(TypeError, match="wrap it in a list"):
        build_detection_prompt("cat")


def test_clean_name_keeps_token_ids_for_greek_final_sigma():
    # Official GLIP does not lower-case; clean_name does, which must leave an uncased BERT's ids
    # unchanged. str.lower() turns a word-final capital sigma into "ς" (a different token than
    # the "σ" BERT's own lower-casing gives), so the lower-casing must be per character.
    from glip_d2.text import load_tokenizer

    tokenizer = load_tokenizer("bert-base-uncased")
    for name in ["ΟΔΟΣ", "ΜΥΣ", "ΣΟΦΟΣ ΚΑΙ"]:
        assert clean_name(name) == name.translate({ord("Σ"): "σ"}).lower()
        ids = tokenizer(name, add_special_tokens=False)["input_ids"]
        assert tokenizer(clean_name(name), add_special_tokens=False)["input_ids"] == ids
