"""Issue 15, item 8: pseudo_label input lines, AMP on CPU."""

import json

import pytest

from glip_d2.selftrain import read_caption_collection


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"file_name": "b.png", "caption": "a cat"', r"c\.jsonl:3: not valid JSON"),
        ('["b.png", "a cat"]', r"c\.jsonl:3: a JSON list, not an object"),
        ('{"file_name": "b.png", "caption": "a cat", "id": "seven"}', r"c\.jsonl:3: id 'seven' is not an integer"),
        ('{"file_name": "b.png", "caption": "a cat", "id": 2.5}', r"c\.jsonl:3: id 2.5 is not an integer"),
    ],
)
def test_pseudo_label_input_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    good = json.dumps({"file_name": "a.png", "caption": "a dog", "id": 1})
    path.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_caption_collection(str(path))


def test_integer_ids_as_numbers_or_strings_still_read(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"file_name": "a.png", "caption": "a dog", "id": "4"}\n'
                    '{"file_name": "b.png", "caption": "a cat", "id": 5.0}\n')
    assert [r.image_id for r in read_caption_collection(str(path))] == [4, 5]
