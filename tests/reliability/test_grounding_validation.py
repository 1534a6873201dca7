"""Issue 15, item 2: `register_grounding_instances` (also used for pseudo-labels) and
`register_mdetr` validate with the same validator: no box is silently changed or dropped."""

import json

import pytest
from detectron2.data import DatasetCatalog

from glip_d2.data import register_grounding_instances
from glip_d2.data.datasets._utils import DatasetFormatError
from glip_d2.data.datasets.mdetr import register_mdetr

CAPTION = "a red circle next to a blue square"


def _json(tmp_path, anno_update=None, drop=None, raw=None):
    anno = {"id": 7, "image_id": 1, "bbox": [30, 20, 10, 10], "tokens_positive": [[2, 12]]}
    anno.update(anno_update or {})
    for key in drop or ():
        anno.pop(key)
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 96, "caption": CAPTION}],
        "annotations": [anno,
                        {"id": 8, "image_id": 1, "bbox": [1, 2, 3, 4], "tokens_positive": [[22, 34]]}],
    }
    text = json.dumps(data)
    for old, new in (raw or {}).items():  # json.dumps writes inf/nan as Infinity/NaN
        text = text.replace(old, new)
    path = tmp_path / "grounding.json"
    path.write_text(text)
    return str(path)


BAD = {
    "negative width": ({"bbox": [30, 20, -60, 40]}, None, r"bbox \[30.*-60.*negative width"),
    "infinite size": ({"bbox": [30, 20, float("inf"), float("inf")]}, None, "not four finite"),
    "nan box": ({"bbox": [float("nan"), 20, 5, 5]}, None, "not four finite"),
    "three numbers": ({"bbox": [1, 2, 3]}, None, "not four finite"),
    "no tokens_positive": (None, ["tokens_positive"], r"lacks \['tokens_positive'\]"),
    "span past caption": ({"tokens_positive": [[30, 99]]}, None, "lies outside its caption"),
    "span not a pair": ({"tokens_positive": [[3]]}, None, "not a \\[start, end\\) pair"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_both_registrations_reject_the_same_bad_record(tmp_path, names, case):
    update, drop, message = BAD[case]
    path = _json(tmp_path, update, drop)
    errors = []
    for register in (register_grounding_instances, register_mdetr):
        name = names()
        register(name, path, str(tmp_path))
        with pytest.raises(DatasetFormatError, match=message) as err:
            DatasetCatalog.get(name)
        errors.append(str(err.value))
        assert "grounding.json: annotation #0 (id 7)" in str(err.value)
    assert errors[0] == errors[1]  # one validator, one message


def test_a_valid_file_loads_identically_through_both(tmp_path, names):
    path = _json(tmp_path)
    a, b = names(), names()
    register_grounding_instances(a, path, str(tmp_path))
    register_mdetr(b, path, str(tmp_path))
    (ra,), (rb,) = DatasetCatalog.get(a), DatasetCatalog.get(b)
    rb.pop("dataset_name")
    assert ra == rb
    assert [o["bbox"] for o in ra["annotations"]] == [[30.0, 20.0, 10.0, 10.0], [1.0, 2.0, 3.0, 4.0]]
