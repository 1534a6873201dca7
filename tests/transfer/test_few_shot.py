"""DATASETS.FEW_SHOT: k-shot subsets of detection datasets."""
import random

import pytest

from glip_d2.data.few_shot import category_counts, sample_few_shot


def _dicts(n=200, num_classes=5, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        annos = [{"category_id": rng.randrange(num_classes), "bbox": [0, 0, 5, 5], "bbox_mode": 1}
                 for _ in range(rng.randint(1, 4))]
        out.append({"file_name": f"{i}.png", "image_id": i, "height": 10, "width": 10,
                    "annotations": annos})
    return out


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_every_category_gets_at_least_k_instances_and_few_images(k):
    dicts = _dicts()
    subset = sample_few_shot(dicts, k, seed=0)
    counts = category_counts(subset)
    assert all(counts[c] >= k for c in range(5))
    assert len(subset) <= 5 * k  # each kept image was needed by some category
    assert [d["image_id"] for d in subset] == sorted(d["image_id"] for d in subset)


def test_same_seed_same_subset_other_seed_other_subset():
    dicts = _dicts()
    ids = lambda s: [d["image_id"] for d in s]  # noqa: E731
    assert ids(sample_few_shot(dicts, 3, seed=1)) == ids(sample_few_shot(_dicts(), 3, seed=1))
    assert ids(sample_few_shot(dicts, 3, seed=0)) != ids(sample_few_shot(dicts, 3, seed=1))


def test_rare_categories_keep_what_they_have_and_bad_k_is_an_error(caplog):
    dicts = _dicts(num_classes=2)
    dicts[0]["annotations"].append({"category_id": 7, "bbox": [0, 0, 2, 2], "bbox_mode": 1})
    subset = sample_few_shot(dicts, 2, categories=[0, 1, 7])
    assert category_counts(subset)[7] == 1
    assert "fewer than 2" in caplog.text
    with pytest.raises(ValueError, match=">= 1"):
        sample_few_shot(dicts, 0)
    with pytest.raises(ValueError, match="no annotated"):
        sample_few_shot([{"annotations": []}], 1)


def test_config_cuts_a_registered_training_dataset(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from glip_d2.data.build import load_checked_train_dicts
    from tests.helpers import tiny_cfg

    name = "_few_shot_test_train"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: _dicts(num_classes=3))
        MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"])
    cfg = tiny_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.CHECK_RECORDS = "none"
    cfg.DATASETS.FEW_SHOT = 3
    cfg.DATASETS.FEW_SHOT_SEED = 2
    cfg.DATASETS.FEW_SHOT_MODE = "instances"
    (part,) = load_checked_train_dicts(cfg, mapper=None)
    assert all(category_counts(part)[c] >= 3 for c in range(3)) and len(part) <= 9
    assert part == sample_few_shot(_dicts(num_classes=3), 3, seed=2)
    cfg.DATASETS.FEW_SHOT_MODE, cfg.DATASETS.FEW_SHOT_SEED = "official", 0
    (official,) = load_checked_train_dicts(cfg, mapper=None)
    assert official == sample_few_shot(_dicts(num_classes=3), 3, seed=0, mode="official")
    assert official != sample_few_shot(_dicts(num_classes=3), 3, seed=0, mode="instances")
    cfg.DATASETS.FEW_SHOT = 0
    assert len(load_checked_train_dicts(cfg, mapper=None)[0]) == 200
    cfg.DATASETS.FEW_SHOT = -1  # was the whole dataset, silently
    with pytest.raises(ValueError, match=r"^DATASETS.FEW_SHOT is -1; give k > 0"):
        load_checked_train_dicts(cfg, mapper=None)


def _record(image_id, cats, crowd=()):
    annos = [{"category_id": c, "bbox": [0, 0, 5, 5], "bbox_mode": 1} for c in cats]
    annos += [{"category_id": c, "bbox": [0, 0, 5, 5], "bbox_mode": 1, "iscrowd": 1} for c in crowd]
    return {"file_name": f"{image_id}.png", "image_id": image_id, "height": 10, "width": 10,
            "annotations": annos}


def test_official_mode_counts_images_in_image_id_order_at_seed_0():
    """Official GLIP's few-shot: k images per category (three boxes of one category in one image
    count once), images visited by image id (the list order does not matter) at seed 0, crowd
    boxes counted."""
    dicts = [_record(3, [1]), _record(1, [0, 0, 0]), _record(2, [0, 1]), _record(4, [0]),
             _record(5, [], crowd=[2]), _record(6, [2])]
    ids = lambda s: [d["image_id"] for d in s]  # noqa: E731  (the records keep their list order)
    assert ids(sample_few_shot(dicts, 1, seed=0, mode="official")) == [1, 2, 5]
    assert ids(sample_few_shot(dicts, 2, seed=0, mode="official")) == [3, 1, 2, 5, 6]
    # the instance count would stop at image 1 for category 0 (three instances >= k = 2)
    two = sample_few_shot(dicts, 2, seed=0, mode="instances")
    assert sum(1 for d in two if any(a["category_id"] == 0 for a in d["annotations"])) < 3
    with pytest.raises(ValueError, match="FEW_SHOT_MODE must be one of"):
        sample_few_shot(dicts, 1, mode="images")


@pytest.mark.parametrize("k", [1, 3, 5])
def test_official_mode_other_seeds_shuffle_and_give_k_images_per_category(k):
    dicts = _dicts()
    subsets = {s: sample_few_shot(dicts, k, seed=s, mode="official") for s in (0, 1, 2)}
    for subset in subsets.values():
        images = category_counts([dict(d, annotations=[
            dict(a) for a in {a["category_id"]: a for a in d["annotations"]}.values()]) for d in subset])
        assert all(images[c] >= k for c in range(5))  # k images per category at least
        assert len(subset) <= 5 * k
    ids = {s: [d["image_id"] for d in v] for s, v in subsets.items()}
    assert ids[1] != ids[0] and ids[2] != ids[1]
    assert ids[1] == [d["image_id"] for d in sample_few_shot(_dicts(), k, seed=1, mode="official")]
