import pytest
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from glip_d2.text import clean_name
from glip_d2.vocabularies import COCO_CLASSES, builtin_vocabularies, get_vocabulary


def test_coco_is_the_80_coco_2017_classes_in_order_with_their_json_ids():
    coco = get_vocabulary("coco")
    things = [c for c in COCO_CATEGORIES if c["isthing"]]
    assert len(coco) == 80 and coco.names == COCO_CLASSES
    assert list(coco.names) == [c["name"] for c in things]
    assert list(coco.category_ids) == [c["id"] for c in things]
    assert coco.names == coco.prompt_names and all(clean_name(n) == n for n in coco.names)


def test_lvis_v1_has_1203_cleaned_names_and_unique_prompt_names():
    lvis = get_vocabulary("LVIS")
    assert len(lvis) == len(lvis.prompt_names) == len(lvis.category_ids) == 1203
    assert list(lvis.category_ids) == list(range(1, 1204))
    assert lvis.names[0] == "aerosol can" and lvis.prompt_names[0] == "aerosol_can"
    assert all(clean_name(p) == n for p, n in zip(lvis.prompt_names, lvis.names))
    assert len(set(lvis.prompt_names)) == 1203
    # five LVIS names collide once cleaned (official GLIP keeps them as separate labels)
    assert 1203 - len(set(lvis.names)) == 5 and lvis.names.count("bow") == 2


def test_unknown_vocabulary_lists_the_builtin_ones():
    assert builtin_vocabularies() == ["coco", "lvis"]
    with pytest.raises(ValueError, match=r"'objects365'.*\['coco', 'lvis'\]"):
        get_vocabulary("objects365")


def test_a_non_string_vocabulary_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"a builtin vocabulary name \(str\).*got a list"):
        get_vocabulary(["cat", "dog"])
