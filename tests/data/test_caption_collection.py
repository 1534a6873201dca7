"""Image-caption collections (jsonl / CSV): what a caption may be, and malformed rows."""

import json

import pytest

from glip_d2.data.datasets.caption_collection import read_caption_collection


def _jsonl(tmp_path, rows):
    path = tmp_path / "caps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_captions_are_stripped_strings(tmp_path):
    path = _jsonl(tmp_path, [{"file_name": " a.jpg ", "caption": "  a dog \n"},
                             {"image": "b.jpg", "caption": " ", "text": "a cat"}])
    records = read_caption_collection(path)
    assert [(r.file_name, r.caption) for r in records] == [("a.jpg", "a dog"), ("b.jpg", "a cat")]


@pytest.mark.parametrize(
    "caption, message",
    [
        ("   ", r"caps.jsonl:2: no caption \(expected a non-blank string"),
        (["a dog", "a cat"], r"caps.jsonl:2: 'caption' holds \['a dog', 'a cat'\] \(list\), but"),
        ({"en": "x"}, r"caps.jsonl:2: 'caption' holds \{'en': 'x'\} \(dict\), but the caption"),
        (7, r"caps.jsonl:2: 'caption' holds 7 \(int\), but the caption must be a string"),
    ],
)
def test_blank_or_non_string_captions_are_refused(tmp_path, caption, message):
    path = _jsonl(tmp_path, [{"file_name": "a.jpg", "caption": "ok"},
                             {"file_name": "b.jpg", "caption": caption}])
    with pytest.raises(ValueError, match=message):
        read_caption_collection(path)


def test_a_csv_row_with_an_extra_field_is_named(tmp_path):
    path = tmp_path / "caps.csv"
    path.write_text("file_name,caption\na.jpg,a dog\nb.jpg,a dog, and a cat\n")
    with pytest.raises(ValueError, match=r"caps.csv:3: 3 fields, but the header has 2 columns "
                                         r"\['file_name', 'caption'\]; quote a field"):
        read_caption_collection(str(path))
    path.write_text('file_name,caption\na.jpg,a dog\nb.jpg,"a dog, and a cat"\n')
    assert read_caption_collection(str(path))[1].caption == "a dog, and a cat"
