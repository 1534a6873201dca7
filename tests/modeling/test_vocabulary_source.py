"""A model whose initial vocabulary cannot be prompted says where that vocabulary came from
(MODEL.GLIP.VOCABULARY, or the class names of DATASETS.TEST[0] and its json)."""

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from tests.helpers import tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def test_dataset():
    name = "vocabulary_source_test"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(thing_classes=["cat", "(unknown)", "dog"], json_file="/data/x.json")
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_a_test_dataset_name_that_cannot_be_prompted_names_the_dataset_and_json(test_dataset):
    cfg = tiny_cfg()
    cfg.MODEL.GLIP.VOCABULARY = []
    cfg.DATASETS.TEST = (test_dataset,)
    with pytest.raises(ValueError) as error:
        build_model(cfg)
    message = str(error.value)
    assert message.startswith(
        "The model's vocabulary, the class names of DATASETS.TEST[0] 'vocabulary_source_test' "
        "(categories of /data/x.json), cannot be its prompt: Vocabulary name #1 ('(unknown)') "
        "is empty after clean_name"
    ), message


def test_a_fixed_vocabulary_that_cannot_be_prompted_names_the_key():
    cfg = tiny_cfg()
    cfg.MODEL.GLIP.VOCABULARY = ["cat", "cat"]
    with pytest.raises(ValueError, match=r"^The model's vocabulary, MODEL.GLIP.VOCABULARY, cannot"):
        build_model(cfg)


def test_the_vocabulary_is_a_plain_list_once_set(test_dataset):
    cfg = tiny_cfg()
    cfg.MODEL.GLIP.VOCABULARY = ["cat", "dog"]
    model = build_model(cfg)
    assert type(model.vocabulary) is list and model.vocabulary == ["cat", "dog"]
