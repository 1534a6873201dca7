import pytest

from glip_d2.text import ClassDescription, apply_descriptions, build_detection_prompt


def test_apply_descriptions_mapping_reads_a_string_as_suffix_like_load_descriptions():
    # {"cat": " on a sofa"} must describe the class "cat", not rename it to " on a sofa".
    vocabulary = apply_descriptions(["cat", "dog"], {"cat": " on a sofa"})
    assert vocabulary == [ClassDescription("cat", "", " on a sofa"), "dog"]
    caption, spans = build_detection_prompt(vocabulary)
    assert caption == "cat on a sofa. dog" and spans == [(0, 3), (15, 18)]


def test_apply_descriptions_mapping_value_without_name_takes_the_key():
    vocabulary = apply_descriptions(["cat"], {"cat": {"prefix": "a "}})
    assert vocabulary == [ClassDescription("cat", "a ", "")]
    kept = ClassDescription("kitty", "a ", "")
    assert apply_descriptions(["cat"], {"cat": kept}) == [kept]


def test_apply_descriptions_mapping_with_a_bad_value_is_a_clear_error():
    with pytest.raises(ValueError, match="The description of 'cat' must be a dict or a string"):
        apply_descriptions(["cat"], {"cat": 3})


def test_load_descriptions_accepts_a_pathlib_path(tmp_path):
    from glip_d2.text import load_descriptions

    path = tmp_path / "descriptions.json"
    path.write_text('{"cat": " on a sofa"}', encoding="utf-8")
    expected = {"cat": {"prefix": "", "name": "cat", "suffix": " on a sofa"}}
    assert load_descriptions(path) == expected
    yaml_path = tmp_path / "descriptions.YAML"
    yaml_path.write_text("cat: ' on a sofa'\n", encoding="utf-8")
    assert load_descriptions(yaml_path) == expected
