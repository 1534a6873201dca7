"""`ResumableTrainLoader`: the training data stream as a pure function of (seed, position), with
a position that goes into the checkpoint, so `--resume` continues the very same stream.

Detectron2's loader restarts its sampler from the seed on resume, so a resumed run sees other
images than the uninterrupted one. Here:

* every sampled index gets a *stream position* (0, 1, 2, ... per rank); the image at position
  ``p`` is mapped with Python's, numpy's and torch's global RNGs seeded from ``(seed, rank, p)``
  (and restored afterwards), so its augmentations and training prompt do not depend on the
  worker, the number of workers, or anything mapped before;
* workers take positions round-robin and the main process puts their outputs back into position
  order before batching (aspect-ratio grouping included), so batches do not depend on the number
  of workers either;
* :meth:`ResumableTrainLoader.state_dict` is the first position not yet delivered in a batch
  plus the later positions already delivered (aspect-ratio grouping delivers out of order).
  After :meth:`~ResumableTrainLoader.load_state_dict` the stream restarts at that position,
  skipping what was delivered, which rebuilds the aspect-ratio buckets exactly as they were.

A record whose mapping fails (missing or unreadable image, size mismatch, a span that maps to no
token, a field of the wrong type, ... : any exception of the mapper) raises
:class:`~glip_d2.data.validate.BadRecordError` naming it; with
``skip_bad_records`` it is dropped, counted and logged, and a replacement is drawn
deterministically from ``(seed, position)``, among the records the sampler draws from and as it
weighs them (never from a dataset of ratio 0 or outside a random subset).
"""

import hashlib
import itertools
import logging
import random
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from detectron2.utils import comm
from torch.utils.data import DataLoader, IterableDataset, Sampler, get_worker_info

from .validate import BadRecordError, describe_record

__all__ = ["ResumableTrainLoader"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1
# Replacements tried for one position before giving up (all of them bad records or None).
_MAX_RETRIES = 50


def _item_seed(seed: int, rank: int, position: int, attempt: int = 0) -> int:
    key = f"{seed}:{rank}:{position}:{attempt}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


@contextmanager
def _seeded_rngs(seed: int):
    """Seed Python's, numpy's and torch's (CPU) global RNGs; restore them afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    torch_state = torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def _identity(x):
    return x


def _subset_of(sampler) -> Optional[List[int]]:
    """The record indices a subset sampler draws from (RandomSubsetTrainingSampler), else None."""
    subset = getattr(sampler, "_indexes_subset", None)
    return None if subset is None else torch.as_tensor(subset).tolist()


def _draw_weights(sampler, size: int) -> Optional[List[float]]:
    """How often the sampler draws each record, relatively (None = all equally): the index
    probabilities of DatasetRatioTrainingSampler, the repeat factors of Detectron2's
    RepeatFactorTrainingSampler, the subset of its RandomSubsetTrainingSampler."""
    weights = getattr(sampler, "weights", None)
    if weights is None and hasattr(sampler, "_int_part") and hasattr(sampler, "_frac_part"):
        weights = sampler._int_part + sampler._frac_part
    if weights is None and _subset_of(sampler) is not None:
        weights = torch.zeros(size, dtype=torch.float64)
        weights[torch.as_tensor(_subset_of(sampler), dtype=torch.int64)] = 1.0
    if weights is None or len(weights) != size:
        return None
    return torch.as_tensor(weights, dtype=torch.float64).tolist()


class _PositionedStream(IterableDataset):
    """(position, mapped record, records skipped) for the positions of this worker, in order."""

    def __init__(self, loader: "ResumableTrainLoader"):
        self.dataset = loader.dataset
        self.sampler = loader.sampler
        self.mapper = loader.mapper
        self.seed = loader.seed
        self.rank = loader.rank
        self.start = loader._start
        self.skip = frozenset(loader._skip)
        self.skip_bad = loader.skip_bad_records
        self._cum_weights = None  # of the replacement draw, computed when first needed

    def _replacement(self, rng: random.Random) -> int:
        """A record index to replace a bad one, drawn as the sampler weighs the records."""
        if self._cum_weights is None:
            weights = _draw_weights(self.sampler, len(self.dataset))
            self._cum_weights = [] if weights is None else list(itertools.accumulate(weights))
        if not self._cum_weights:
            return rng.randrange(len(self.dataset))
        return rng.choices(range(len(self.dataset)), cum_weights=self._cum_weights)[0]

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for position, index in enumerate(self.sampler):
            if position < self.start or position in self.skip:
                continue
            if position % num_workers != worker:
                continue
            yield self._map(position, int(index))

    def _map(self, position: int, index: int):
        skipped = []
        for attempt in range(_MAX_RETRIES):
            record = self.dataset[index]
            try:
                with _seeded_rngs(_item_seed(self.seed, self.rank, position, attempt)):
                    data = self.mapper(record)
            except Exception as error:  # any failure of one record is that record's problem
                if not self.skip_bad:
                    reason = str(error).rstrip()
                    end = "" if reason.endswith((".", "!", "?")) else "."  # no ".." after one
                    raise BadRecordError(
                        f"Training record {describe_record(record)} cannot be used: "
                        f"{type(error).__name__}: {reason}{end} Fix or remove the record, or set "
                        "DATASETS.SKIP_BAD_RECORDS True to drop and count such records."
                    ) from error
                skipped.append(f"{describe_record(record)}: {type(error).__name__}: {error}")
                data = None
            if data is not None:
                return position, data, skipped
            # None (a mapper filtered the record) or a skipped bad record: a replacement drawn
            # from (seed, position, attempt), like Detectron2's MapDataset but reproducible, and
            # only among the records the sampler draws (a ratio-0 dataset stays out).
            rng = random.Random(_item_seed(self.seed, self.rank, position, attempt + 1))
            index = self._replacement(rng)
        raise RuntimeError(
            f"{_MAX_RETRIES} records in a row could not be mapped at stream position {position}; "
            f"the last problems: {skipped[-3:]}. Check the training data."
        )


class ResumableTrainLoader:
    """Batches of mapped training records, resumable exactly (see the module docstring).

    Iterating yields lists of ``batch_size`` mapped dicts forever, like Detectron2's train
    loader; one iterator at a time.
    """

    def __init__(
        self,
        dataset: Sequence[dict],
        sampler: Sampler,
        mapper,
        *,
        batch_size: int,
        aspect_ratio_grouping: bool = True,
        num_workers: int = 0,
        seed: Optional[int] = None,
        skip_bad_records: bool = False,
    ):
        """
        Args:
            dataset: the records (dicts), indexed by the sampler.
            sampler: an infinite sampler of indices (Detectron2's TrainingSampler, ...); it
                slices its stream per rank itself.
            mapper: record -> model input (None = filtered, replaced by another record).
            batch_size: images per batch on this rank.
            aspect_ratio_grouping: batch images with w > h and w <= h separately.
            num_workers: data-loading worker processes (0 = in the main process).
            seed: seed of the per-position RNGs; None = the sampler's seed.
            skip_bad_records: drop and count records whose mapping fails instead of raising.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.dataset = dataset
        self.sampler = sampler
        self.mapper = mapper
        self.batch_size = batch_size
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.num_workers = num_workers
        self.rank = comm.get_rank()
        if seed is None:
            seed = getattr(sampler, "_seed", None)
        self.seed = int(comm.shared_random_seed() if seed is None else seed)
        self.skip_bad_records = skip_bad_records
        self.skipped_records = 0
        self._start = 0  # where the next iterator starts ...
        self._skip: set = set()  # ... and the later positions it leaves out (already delivered)
        self._next = 0  # first position not yet delivered in a batch
        self._ahead: set = set()  # positions > _next already delivered
        self._iterating = False

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict:
        """Where the stream stands: enough to continue it exactly (plain ints and lists)."""
        return {
            "version": _STATE_VERSION,
            "next_position": self._next,
            "delivered_ahead": sorted(self._ahead),
            "seed": self.seed,
            "sampler_seed": getattr(self.sampler, "_seed", None),
            # Detectron2's RandomSubsetTrainingSampler draws its subset once, from a seed that is
            # random unless given: a resumed run would train on another subset.
            "sampler_subset": _subset_of(self.sampler),
            "dataset_size": len(self.dataset),
            "skipped_records": self.skipped_records,
        }

    def load_state_dict(self, state: Dict) -> None:
        """Continue the stream of ``state`` (before the first batch is drawn): its position, its
        seeds and, for Detectron2's RandomSubsetTrainingSampler, its subset of the records.

        Raises:
            ValueError: when the state is of another version or another dataset size (a
                different training set cannot continue the same stream), of a subset sampler
                for a sampler without one, or iteration began.
        """
        if self._iterating:
            raise ValueError("load_state_dict must be called before the loader is iterated.")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"Data-stream state of version {state.get('version')!r}, expected "
                f"{_STATE_VERSION}; it was written by another glip_d2 version."
            )
        if state["dataset_size"] != len(self.dataset):
            raise ValueError(
                f"The checkpoint's data stream ran over {state['dataset_size']} training records, "
                f"the configured datasets have {len(self.dataset)}: resuming would not continue "
                "the same stream. Resume with the same DATASETS.TRAIN (and the same records), "
                "or start a new run from the checkpoint's weights (MODEL.WEIGHTS, no --resume)."
            )
        self.seed = int(state["seed"])
        if state.get("sampler_seed") is not None:
            if not hasattr(self.sampler, "_seed"):
                raise ValueError(
                    f"The sampler {type(self.sampler).__name__} has no seed to restore; exact "
                    "resume needs a seeded sampler (TrainingSampler, RepeatFactorTrainingSampler, "
                    "DatasetRatioTrainingSampler)."
                )
            self.sampler._seed = int(state["sampler_seed"])
        if state.get("sampler_subset") is not None:
            if _subset_of(self.sampler) is None:
                raise ValueError(
                    f"The checkpoint's data stream drew from a subset of the records "
                    f"(RandomSubsetTrainingSampler), the sampler {type(self.sampler).__name__} "
                    "does not: resume with the same DATALOADER.SAMPLER_TRAIN."
                )
            self.sampler._indexes_subset = torch.as_tensor(
                state["sampler_subset"], dtype=torch.int64
            )
        self._start = self._next = int(state["next_position"])
        self._skip = set(int(p) for p in state["delivered_ahead"])
        self._ahead = set(self._skip)
        self.skipped_records = int(state.get("skipped_records", 0))

    # ------------------------------------------------------------------ iteration
    def _deliver(self, positions: List[int]) -> None:
        self._ahead.update(positions)
        while self._next in self._ahead:
            self._ahead.remove(self._next)
            self._next += 1

    def _in_position_order(self, items) -> Iterator:
        expected = self._start
        pending = {}
        for position, data, skipped in items:
            pending[position] = (data, skipped)
            while True:
                while expected in self._skip:
                    expected += 1
                if expected not in pending:
                    break
                data, skipped = pending.pop(expected)
                if skipped:
                    self.skipped_records += len(skipped)
                    logger.warning(
                        f"Skipped {len(skipped)} bad training record(s) "
                        f"({self.skipped_records} so far): " + "; ".join(skipped[:3])
                    )
                yield expected, data
                expected += 1

    def __iter__(self) -> Iterator[List[dict]]:
        if self._iterating:
            raise RuntimeError("ResumableTrainLoader supports one iterator at a time.")
        self._iterating = True
        generator = torch.Generator()
        generator.manual_seed(self.seed)  # never draws from the global RNG
        loader = DataLoader(
            _PositionedStream(self),
            batch_size=None,
            collate_fn=_identity,
            num_workers=self.num_workers,
            generator=generator,
        )
        buckets = [[], []] if self.aspect_ratio_grouping else [[]]
        try:
            for position, data in self._in_position_order(iter(loader)):
                bucket = buckets[0]
                if self.aspect_ratio_grouping and not data["width"] > data["height"]:
                    bucket = buckets[1]
                bucket.append((position, data))
                if len(bucket) == self.batch_size:
                    batch = bucket[:]
                    del bucket[:]
                    self._deliver([p for p, _ in batch])
                    yield [d for _, d in batch]
        finally:
            self._iterating = False
