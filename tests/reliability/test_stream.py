"""The resumable training stream (issue 15, item 5) and bad records met while mapping (item 3):
batches depend only on (seed, position), not on workers or resumption."""

import itertools
import random

import numpy as np
import pytest
import torch
from detectron2.data.samplers import TrainingSampler

from glip_d2.data.stream import ResumableTrainLoader
from glip_d2.data.validate import BadRecordError

RECORDS = [{"file_name": f"{i}.png", "image_id": i, "height": 10, "width": 20 if i % 3 else 5}
           for i in range(23)]


def draw_mapper(record):
    """Uses every global RNG, as augmentations and training prompts do."""
    return {"id": record["image_id"], "width": record["width"], "height": record["height"],
            "draw": (random.random(), float(np.random.rand()), float(torch.rand(1)))}


def _loader(mapper=draw_mapper, records=RECORDS, **kwargs):
    kwargs.setdefault("batch_size", 4)
    return ResumableTrainLoader(records, TrainingSampler(len(records), seed=3), mapper, seed=5,
                                **kwargs)


def _batches(loader, n):
    return [[(d["id"], d["draw"]) for d in b] for b in itertools.islice(iter(loader), n)]


def test_batches_do_not_depend_on_workers_or_global_rng():
    reference = _batches(_loader(), 12)
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    assert _batches(_loader(), 12) == reference
    assert _batches(_loader(num_workers=2), 12) == reference
    ids = [i for b in reference for i, _ in b]
    assert len(set(ids)) == len(RECORDS)  # 48 draws from 23 records: each seen
    before = torch.get_rng_state()
    _batches(_loader(), 3)
    assert torch.equal(torch.get_rng_state(), before)  # mapping leaves the global RNG alone


@pytest.mark.parametrize("grouping", [True, False])
def test_a_restored_state_continues_the_same_stream(grouping):
    reference = _batches(_loader(aspect_ratio_grouping=grouping), 14)
    first = _loader(aspect_ratio_grouping=grouping)
    it = iter(first)
    for _ in range(5):
        next(it)
    state = first.state_dict()
    if grouping:  # aspect-ratio grouping delivers positions out of order
        assert state["delivered_ahead"] and state["next_position"] < 20
    resumed = _loader(aspect_ratio_grouping=grouping)
    torch.manual_seed(1)  # a fresh process: other global RNG states
    resumed.load_state_dict(state)
    assert _batches(resumed, 9) == reference[5:]


def test_state_of_another_dataset_is_refused():
    state = _loader().state_dict()
    other = _loader(records=RECORDS[:-1])
    with pytest.raises(ValueError, match="ran over 23 training records.*have 22"):
        other.load_state_dict(state)


def _fails_on_7(record):
    if record["image_id"] == 7:
        raise ValueError("Mismatched image shape for image 7.png")
    return draw_mapper(record)


def test_a_bad_record_names_itself_or_is_skipped_and_counted():
    with pytest.raises(BadRecordError, match=r"image_id 7, file '7.png'.*SKIP_BAD_RECORDS"):
        _batches(_loader(_fails_on_7), 20)

    def fails_with_a_sentence(record):  # the mapper's own messages end with a period
        if record["image_id"] == 7:
            raise ValueError("Mask R-CNN needs masks; train that image on boxes only.")
        return draw_mapper(record)

    with pytest.raises(BadRecordError) as error:
        _batches(_loader(fails_with_a_sentence), 20)
    assert "ValueError: Mask R-CNN needs masks; train that image on boxes only. Fix or remove " \
           "the record" in str(error.value) and ".." not in str(error.value)
    loader = _loader(_fails_on_7, skip_bad_records=True)
    batches = _batches(loader, 20)
    assert all(len(b) == 4 for b in batches) and 7 not in {i for b in batches for i, _ in b}
    assert loader.skipped_records >= 1
    assert loader.state_dict()["skipped_records"] == loader.skipped_records
    assert _batches(_loader(_fails_on_7, skip_bad_records=True, num_workers=2), 20) == batches
