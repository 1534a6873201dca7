"""The training loader's records (glip_d2/data/build.py, stream.py): dataset tags and records whose
mapping fails in any way."""

import itertools

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.samplers import TrainingSampler

from glip_d2 import add_glip_config
from glip_d2.data import build_grounding_train_loader
from glip_d2.data.stream import ResumableTrainLoader
from glip_d2.data.validate import BadRecordError


@pytest.fixture
def untagged_datasets(names):
    """Two detection datasets whose loader, like Detectron2's load_coco_json, tags nothing; the
    second has one record its loader tagged itself."""
    made = [names("tags_o365"), names("tags_coco")]
    for name in made:
        dicts = [{"file_name": f"{name}_{i}.png", "image_id": i, "height": 8, "width": 8,
                  "annotations": []} for i in range(3)]
        if name == made[1]:
            dicts[0]["dataset_name"] = "the_loaders_own"
        DatasetCatalog.register(name, lambda d=dicts: d)
        MetadataCatalog.get(name).set(thing_classes=["thing"])
    return made


def test_train_loader_tags_each_record_with_its_dataset(untagged_datasets):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.DATASETS.TRAIN = tuple(untagged_datasets)
    cfg.DATASETS.CHECK_RECORDS = "none"  # the records name no real image files
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    loader = build_grounding_train_loader(cfg, mapper=lambda d: d)
    o365, coco = untagged_datasets
    tags = [d["dataset_name"] for d in loader.dataset]
    assert tags == [o365] * 3 + ["the_loaders_own", coco, coco]
    batch = next(iter(loader))  # what the mapper gets
    assert all(d["dataset_name"] in (o365, coco, "the_loaders_own") for d in batch)


RECORDS = [{"file_name": f"{i}.png", "image_id": i, "height": 10, "width": 20} for i in range(9)]


def _unhashable_phrase_on_4(record):
    if record["image_id"] == 4:
        raise TypeError("unhashable type: 'list'")  # what a list phrase_id did in the mapper
    return {"id": record["image_id"], "width": 20, "height": 10}


def _loader(**kwargs):
    return ResumableTrainLoader(RECORDS, TrainingSampler(len(RECORDS), seed=3),
                                _unhashable_phrase_on_4, batch_size=3, seed=5, **kwargs)


def test_any_mapper_exception_names_the_record_or_is_skipped():
    with pytest.raises(BadRecordError, match=r"image_id 4, file '4.png'.*TypeError.*SKIP_BAD"):
        list(itertools.islice(iter(_loader()), 10))
    loader = _loader(skip_bad_records=True)
    ids = [d["id"] for batch in itertools.islice(iter(loader), 10) for d in batch]
    assert 4 not in ids and len(ids) == 30 and loader.skipped_records >= 1
