"""DATASETS.TRAIN_RATIOS: per-dataset sampling shares in the training loader."""

import itertools
from collections import Counter

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from glip_d2 import add_glip_config
from glip_d2.data import DatasetRatioTrainingSampler, build_grounding_train_loader


def _shares(sampler, sizes, n):
    bounds = list(itertools.accumulate(sizes))
    counts = Counter(
        next(d for d, b in enumerate(bounds) if i < b) for i in itertools.islice(sampler, n)
    )
    return [counts[d] / n for d in range(len(sizes))]


def test_sampler_draws_datasets_by_ratio_not_size():
    sizes = [1000, 10, 90]
    shares = _shares(DatasetRatioTrainingSampler(sizes, [1, 1, 2], seed=0), sizes, 20000)
    assert shares == pytest.approx([0.25, 0.25, 0.5], abs=0.015)
    # within a dataset images are uniform: the 10-image dataset covers all its images evenly
    small = Counter(
        i for i in itertools.islice(DatasetRatioTrainingSampler(sizes, [0, 1, 0], seed=1), 5000)
    )
    assert set(small) == set(range(1000, 1010))
    assert min(small.values()) > 400 and max(small.values()) < 600


def test_sampler_is_seeded_and_ratio_zero_datasets_are_never_drawn():
    a = list(itertools.islice(DatasetRatioTrainingSampler([5, 7], [1, 0], seed=3), 300))
    b = list(itertools.islice(DatasetRatioTrainingSampler([5, 7], [1, 0], seed=3), 300))
    assert a == b and set(a) == set(range(5))
    c = list(itertools.islice(DatasetRatioTrainingSampler([5, 7], [1, 0], seed=4), 300))
    assert a != c


@pytest.mark.parametrize(
    "sizes, ratios, match",
    [
        ([3, 4], [1], "one ratio per dataset"),
        ([3, 4], [0, 0], "at least one"),
        ([3, 4], [1, -1], "non-negative"),
        ([3, 0], [1, 1], "no images"),
    ],
)
def test_sampler_rejects_bad_ratios(sizes, ratios, match):
    with pytest.raises(ValueError, match=match):
        DatasetRatioTrainingSampler(sizes, ratios, seed=0)


@pytest.fixture
def two_datasets():
    names = {"ratio_big_test": 40, "ratio_small_test": 4}
    for name, n in names.items():
        dicts = [
            {"file_name": f"{name}_{i}.png", "image_id": i, "height": 8, "width": 8, "annotations": []}
            for i in range(n)
        ]
        DatasetCatalog.register(name, lambda d=dicts: d)
        MetadataCatalog.get(name).set(thing_classes=["thing"])
    yield list(names)
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _cfg(names, ratios):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.DATASETS.TRAIN = tuple(names)
    cfg.DATASETS.TRAIN_RATIOS = tuple(ratios)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    cfg.SOLVER.IMS_PER_BATCH = 10
    cfg.SEED = 7
    cfg.DATASETS.CHECK_RECORDS = "none"  # the records name no real image files
    return cfg


def test_loader_with_ratios_draws_the_small_dataset_half_the_time(two_datasets):
    loader = build_grounding_train_loader(_cfg(two_datasets, (1, 1)), mapper=lambda d: d["file_name"])
    files = [f for batch in itertools.islice(iter(loader), 40) for f in batch]
    small = sum(f.startswith("ratio_small_test") for f in files) / len(files)
    assert small == pytest.approx(0.5, abs=0.06)  # by size it would be 4 / 44 = 9 %
    with pytest.raises(ValueError, match="one ratio per DATASETS.TRAIN entry"):
        build_grounding_train_loader(_cfg(two_datasets, (1,)), mapper=lambda d: d)


def test_loader_without_ratios_draws_by_size(two_datasets):
    loader = build_grounding_train_loader(_cfg(two_datasets, ()), mapper=lambda d: d["file_name"])
    files = [f for batch in itertools.islice(iter(loader), 40) for f in batch]
    small = sum(f.startswith("ratio_small_test") for f in files) / len(files)
    assert small == pytest.approx(4 / 44, abs=0.04)


def test_sampler_on_detectron2_repeat_factors_draws_each_index_as_the_old_multinomial_one():
    """The sampler replaced a hand-written multinomial draw with replacement over the index
    probabilities r_d / (n_d sum r); on Detectron2's RepeatFactorTrainingSampler each index's
    expected share of an epoch must be that same probability, and the empirical frequencies of
    both streams must agree."""
    import torch
    from detectron2.data.samplers import RepeatFactorTrainingSampler

    sizes, ratios = [50, 3, 0, 12, 35], [1.0, 2.0, 0.0, 0.0, 0.5]
    sampler = DatasetRatioTrainingSampler(sizes, ratios, seed=5)
    assert isinstance(sampler, RepeatFactorTrainingSampler)
    old = torch.cat([torch.full((n,), r / n / sum(ratios), dtype=torch.float64)
                     for n, r in zip(sizes, ratios) if n > 0])
    factors = sampler._int_part + sampler._frac_part
    assert torch.allclose(factors / factors.sum(), old, rtol=1e-12, atol=0)
    assert torch.allclose(sampler.weights, old, rtol=1e-12, atol=0)

    n = 60000
    new_freq = torch.bincount(torch.tensor(list(itertools.islice(sampler, n))), minlength=100) / n
    g = torch.Generator().manual_seed(5)
    old_draws = torch.multinomial(old, n, replacement=True, generator=g)
    old_freq = torch.bincount(old_draws, minlength=100) / n
    # per index: within 5 binomial standard deviations of the shared probability
    sd = (old * (1 - old) / n).sqrt()
    assert ((new_freq.double() - old).abs() <= 5 * sd + 1e-12).all()
    assert ((old_freq.double() - old).abs() <= 5 * sd + 1e-12).all()
    assert new_freq[53:65].sum() == 0  # the ratio-0 dataset (indices 53..64) is never drawn
