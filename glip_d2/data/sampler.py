"""`DatasetRatioTrainingSampler`: draw training images so that each dataset gets a set share.

GLIP trains on mixtures (detection, grounding, pseudo-labelled captions) whose sizes differ by
orders of magnitude; a plain concatenation samples them by size. With ``DATASETS.TRAIN_RATIOS``
each dataset of ``DATASETS.TRAIN`` is drawn with probability proportional to its ratio (images
uniformly within it), whatever its size.
"""

import itertools
from typing import Iterator, Optional, Sequence

import torch
from detectron2.utils import comm
from torch.utils.data.sampler import Sampler

__all__ = ["DatasetRatioTrainingSampler"]


class DatasetRatioTrainingSampler(Sampler):
    """Infinite stream of indices into the concatenation of datasets, drawn with replacement.

    Index ``i`` of dataset ``d`` (of size ``n_d``) has probability ``r_d / (n_d * sum(r))``, so
    dataset ``d`` supplies a share ``r_d / sum(r)`` of the stream. Like Detectron2's
    ``TrainingSampler``, every worker generates the same seeded stream and keeps its own slice.
    """

    def __init__(
        self,
        dataset_sizes: Sequence[int],
        ratios: Sequence[float],
        seed: Optional[int] = None,
        chunk: int = 4096,
    ):
        """
        Args:
            dataset_sizes: number of images of each dataset, in concatenation order.
            ratios: one non-negative weight per dataset, at least one positive.
            seed: shared by all workers; None = a random seed shared via comm.
            chunk: indices drawn per multinomial call.
        """
        if len(dataset_sizes) != len(ratios):
            raise ValueError(
                f"DATASETS.TRAIN_RATIOS has {len(ratios)} entries for {len(dataset_sizes)} "
                "datasets in DATASETS.TRAIN; give one ratio per dataset (or none)."
            )
        if any(r < 0 for r in ratios) or not any(r > 0 for r in ratios):
            raise ValueError(
                f"DATASETS.TRAIN_RATIOS {tuple(ratios)} must be non-negative with at least one "
                "positive entry."
            )
        empty = [i for i, (n, r) in enumerate(zip(dataset_sizes, ratios)) if n == 0 and r > 0]
        if empty:
            raise ValueError(
                f"DATASETS.TRAIN entries {empty} have no images but a positive ratio; remove them "
                "or set their ratio to 0."
            )
        weights = torch.cat(
            [
                torch.full((n,), float(r) / n, dtype=torch.float64)
                for n, r in zip(dataset_sizes, ratios)
                if n > 0
            ]
            + [torch.zeros(0, dtype=torch.float64)]
        )
        # datasets with ratio 0 and size n > 0 contribute zeros; sizes of 0 contribute nothing
        self._weights = weights / weights.sum()
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._chunk = chunk
        self._rank, self._world_size = comm.get_rank(), comm.get_world_size()

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(self._infinite(), self._rank, None, self._world_size)

    def _infinite(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            yield from torch.multinomial(
                self._weights, self._chunk, replacement=True, generator=g
            ).tolist()
