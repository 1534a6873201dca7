"""Review of the training data path: samplers configured through DATALOADER.SAMPLER_TRAIN and
DATASETS.TRAIN_RATIOS, replacements of bad records, record checks."""

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler

from glip_d2 import add_glip_config
from glip_d2.data import DatasetRatioTrainingSampler, build_grounding_train_loader
from glip_d2.data.stream import ResumableTrainLoader


def _records(name, categories):
    """One detection record per entry of `categories` (the category ids of that image)."""
    return [
        {
            "file_name": f"{name}_{i}.png", "image_id": i, "height": 8, "width": 8,
            "annotations": [
                {"bbox": [0, 0, 4, 4], "bbox_mode": 1, "category_id": c, "iscrowd": 0} for c in cats
            ],
        }
        for i, cats in enumerate(categories)
    ]


@pytest.fixture
def vocabularies(names):
    """Two detection datasets with their own (contiguous) category ids and a caption collection
    (records without "annotations"). Category 0 is in every image of the first dataset, in one
    image (index 10 of the concatenation) of the second: rare there."""
    first, second, captions = names("rfs_a"), names("rfs_b"), names("rfs_captions")
    parts = {
        first: _records(first, [[0]] * 10),
        second: _records(second, [[0]] + [[1]] * 9),
        captions: [{"file_name": f"{captions}_{i}.png", "image_id": i, "caption": "a dog"}
                   for i in range(3)]
        # a grounding record whose annotation has no category_id (the mapper reads 0)
        + [{"file_name": f"{captions}_3.png", "image_id": 3, "caption": "a dog",
            "annotations": [{"bbox": [0, 0, 4, 4], "bbox_mode": 1, "tokens_positive": [[2, 5]]}]}],
    }
    for name, dicts in parts.items():
        DatasetCatalog.register(name, lambda d=dicts: d)
        if name != captions:
            MetadataCatalog.get(name).set(thing_classes=["thing", "other"])
    return first, second, captions


def _cfg(train, sampler="TrainingSampler", ratios=()):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.DATASETS.TRAIN = tuple(train)
    cfg.DATASETS.TRAIN_RATIOS = tuple(ratios)
    cfg.DATASETS.CHECK_RECORDS = "none"  # the records name no real image files
    cfg.DATALOADER.SAMPLER_TRAIN = sampler
    cfg.DATALOADER.REPEAT_THRESHOLD = 0.5
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SEED = 3
    return cfg


def _factors(sampler):
    return (sampler._int_part + sampler._frac_part).double()


def test_repeat_factors_count_categories_within_each_dataset(vocabularies):
    """Category ids are contiguous per dataset: id 0 of one dataset is not id 0 of another, so
    repeat factors come from each dataset's own category frequencies (as Detectron2's
    WeightedCategoryTrainingSampler computes them), and a caption record (no "annotations") has
    factor 1 instead of a KeyError, and so does a grounding annotation without a category_id."""
    first, second, captions = vocabularies
    loader = build_grounding_train_loader(
        _cfg([first, second], "RepeatFactorTrainingSampler"), mapper=lambda d: d
    )
    factors = _factors(loader.sampler)
    # the rare image of the second dataset: frequency 1/10, factor sqrt(0.5 / 0.1)
    assert factors[10].item() == pytest.approx(5 ** 0.5, rel=1e-6)
    assert factors[:10].tolist() == [1.0] * 10 and factors[11:].tolist() == [1.0] * 9

    loader = build_grounding_train_loader(
        _cfg([second, captions], "RepeatFactorTrainingSampler"), mapper=lambda d: d
    )
    factors = _factors(loader.sampler)
    assert factors[0].item() == pytest.approx(5 ** 0.5, rel=1e-6)
    assert factors[1:13].tolist() == [1.0] * 12
    # its category 0 is in 1 of the 4 caption images: frequency 1/4, factor sqrt(0.5 / 0.25)
    assert factors[13].item() == pytest.approx(2 ** 0.5, rel=1e-6)


def test_one_dataset_gets_detectron2s_own_repeat_factor_sampler(vocabularies):
    first, second, _ = vocabularies
    cfg = _cfg([second], "RepeatFactorTrainingSampler")
    loader = build_grounding_train_loader(cfg, mapper=lambda d: d)
    theirs = RepeatFactorTrainingSampler(
        RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            DatasetCatalog.get(second), 0.5, sqrt=True
        ),
        seed=cfg.SEED,
    )
    assert type(loader.sampler) is RepeatFactorTrainingSampler
    assert list(itertools.islice(loader.sampler, 200)) == list(itertools.islice(theirs, 200))


def test_ratios_with_repeat_factors_balance_categories_within_each_dataset(vocabularies):
    """TRAIN_RATIOS with SAMPLER_TRAIN RepeatFactorTrainingSampler: each dataset keeps its share,
    its images are drawn by their repeat factors (the repeat factors were silently ignored)."""
    first, second, _ = vocabularies
    loader = build_grounding_train_loader(
        _cfg([first, second], "RepeatFactorTrainingSampler", ratios=(1, 3)), mapper=lambda d: d
    )
    weights = loader.sampler.weights
    assert weights[:10].sum().item() == pytest.approx(0.25)
    assert weights[10:].sum().item() == pytest.approx(0.75)
    rare = 5 ** 0.5
    assert weights[10].item() == pytest.approx(0.75 * rare / (rare + 9))
    assert weights[11].item() == pytest.approx(0.75 / (rare + 9))
    draws = Counter(itertools.islice(loader.sampler, 40000))
    assert draws[10] / 40000 == pytest.approx(weights[10].item(), abs=0.01)


def test_sampler_image_weights_are_checked():
    with pytest.raises(ValueError, match="one weight per image"):
        DatasetRatioTrainingSampler([2, 2], [1, 1], seed=0, image_weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="no positive image weight"):
        DatasetRatioTrainingSampler([2, 2], [1, 1], seed=0, image_weights=[1.0, 1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="non-negative"):
        DatasetRatioTrainingSampler([2], [1], seed=0, image_weights=[1.0, float("nan")])


@pytest.mark.parametrize(
    "sampler, ratios, match",
    [
        ("WeightedTrainingSampler", (), "DATASETS.TRAIN_RATIOS"),
        ("WeightedCategoryTrainingSampler", (), "RepeatFactorTrainingSampler"),
        ("RandomSubsetTrainingSampler", (1, 1), "RandomSubsetTrainingSampler"),
    ],
)
def test_samplers_glip_d2_cannot_build_are_refused_with_the_route_to_take(
    vocabularies, sampler, ratios, match
):
    """Detectron2's Weighted*TrainingSampler read DATASETS.TRAIN_REPEAT_FACTOR (a key its config
    does not define: an AttributeError deep inside it) and reload the records unchecked; a subset
    sampler with TRAIN_RATIOS was silently replaced by the ratio sampler."""
    first, second, _ = vocabularies
    with pytest.raises(ValueError, match=match):
        build_grounding_train_loader(_cfg([first, second], sampler, ratios), mapper=lambda d: d)


def _fails_on_0(record):
    if record["image_id"] == 0:
        raise OSError("cannot read image")
    return {"id": record["image_id"], "width": 20, "height": 10}


@pytest.mark.parametrize(
    "sampler, allowed",
    [
        (DatasetRatioTrainingSampler([5, 5], [1, 0], seed=0), set(range(1, 5))),
        (RepeatFactorTrainingSampler(torch.tensor([1.0] * 5 + [0.0] * 5), seed=0),
         set(range(1, 5))),
    ],
    ids=["ratio-0 dataset", "repeat factor 0"],
)
def test_a_skipped_record_is_replaced_by_one_its_sampler_can_draw(sampler, allowed):
    """DATASETS.SKIP_BAD_RECORDS: the replacement of a bad record comes from the records the
    sampler draws from (never a dataset of ratio 0), drawn as the sampler weighs them."""
    records = [{"file_name": f"{i}.png", "image_id": i, "height": 10, "width": 20}
               for i in range(10)]
    loader = ResumableTrainLoader(records, sampler, _fails_on_0, batch_size=4, seed=1,
                                  skip_bad_records=True, aspect_ratio_grouping=False)
    ids = [d["id"] for batch in itertools.islice(iter(loader), 60) for d in batch]
    assert loader.skipped_records > 20
    assert set(ids) == allowed


def test_a_skipped_record_of_a_random_subset_is_replaced_from_the_subset():
    from detectron2.data.samplers import RandomSubsetTrainingSampler

    records = [{"file_name": f"{i}.png", "image_id": i, "height": 10, "width": 20}
               for i in range(40)]
    sampler = RandomSubsetTrainingSampler(40, 0.25, seed_shuffle=0, seed_subset=1)
    subset = set(sampler._indexes_subset.tolist())
    bad = min(subset)

    def mapper(record):
        if record["image_id"] == bad:
            raise OSError("cannot read image")
        return {"id": record["image_id"], "width": 20, "height": 10}

    loader = ResumableTrainLoader(records, sampler, mapper, batch_size=5, seed=1,
                                  skip_bad_records=True, aspect_ratio_grouping=False)
    ids = [d["id"] for batch in itertools.islice(iter(loader), 40) for d in batch]
    assert loader.skipped_records > 5
    assert set(ids) == subset - {bad}


def test_record_sizes_of_numpy_integers_are_accepted(tmp_path):
    """A loader that builds its records with numpy/pandas gives heights of np.int64, which
    Detectron2 accepts (check_image_size compares them with ==); the check rejected every record
    of such a dataset as "height/width 8/8 are not positive integers"."""
    import cv2

    from glip_d2.data.validate import check_record

    path = str(tmp_path / "a.png")
    cv2.imwrite(path, np.zeros((8, 6, 3), np.uint8))
    for kind in (np.int64, np.int32, np.uint16):
        assert check_record({"file_name": path, "height": kind(8), "width": kind(6)}) == []
    wrong = check_record({"file_name": path, "height": np.int64(6), "width": np.int64(8)})
    assert wrong and "the image is 8 x 6" in wrong[0]
    for bad in (np.bool_(True), 8.0, np.float32(8), np.int64(0), "8"):
        problems = check_record({"file_name": path, "height": bad, "width": 6})
        assert problems and "not positive integers" in problems[0]


@pytest.mark.parametrize(
    "categories, match",
    [
        ([{"id": 1}], r"category #0.*name"),
        ([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}, {"id": 2, "name": "c"}],
         "category id 1 appears twice"),
    ],
    ids=["no name", "repeated id"],
)
def test_detection_registration_reads_the_categories_through_the_validating_parser(
    tmp_path, names, categories, match
):
    """register_detection_as_grounding read the json's categories with its own unchecked code: a
    category without a name was a bare KeyError, a repeated id gave a vocabulary one name too long
    and an id map that skips a name."""
    import json

    from glip_d2.data import register_detection_as_grounding

    json_file = tmp_path / "det.json"
    json_file.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    name = names("det_categories")
    with pytest.raises(ValueError, match=match) as error:
        register_detection_as_grounding(name, {}, str(json_file), str(tmp_path))
    assert str(json_file) in str(error.value)
    assert name not in DatasetCatalog.list()


@pytest.mark.parametrize(
    "span", [[0, 3, 5], 5, [2, 100], [-1, 3], [4, 2], ["0", "3"], [0.5, 3]],
    ids=["three", "int", "past end", "negative", "reversed", "strings", "fraction"],
)
def test_a_malformed_or_outside_span_is_a_problem_of_its_record_at_load(tmp_path, span):
    """The load-time check ran span arithmetic on unchecked spans: a malformed span crashed it
    with a bare TypeError/ValueError naming no record, and a span past the caption passed, to
    stop training when the record was first mapped."""
    import cv2

    from glip_d2.data.validate import BadRecordError, check_record, check_training_records
    from glip_d2.text import load_tokenizer

    path = str(tmp_path / "a.png")
    cv2.imwrite(path, np.zeros((8, 6, 3), np.uint8))
    tokenizer = load_tokenizer("bert-base-uncased")
    good = {"file_name": path, "height": 8, "width": 6, "image_id": 1, "caption": "a dog",
            "annotations": [{"tokens_positive": [[2, 5]]}]}
    bad = dict(good, image_id=2, annotations=[{"tokens_positive": [[2, 5]]},
                                              {"tokens_positive": [span]}])
    assert check_record(good, tokenizer=tokenizer) == []
    problems = check_record(bad, tokenizer=tokenizer)
    assert len(problems) == 1 and problems[0].startswith("annotation #1: ")
    with pytest.raises(BadRecordError, match=r"record #1 \(image_id 2, file .*annotation #1"):
        check_training_records([good, bad], "dataset 'x'", tokenizer=tokenizer)
