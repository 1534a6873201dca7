"""`DatasetRatioTrainingSampler`: draw training images so that each dataset gets a set share.

GLIP trains on mixtures (detection, grounding, pseudo-labelled captions) whose sizes differ by
orders of magnitude; a plain concatenation samples them by size. With ``DATASETS.TRAIN_RATIOS``
each dataset of ``DATASETS.TRAIN`` is drawn with probability proportional to its ratio (images
uniformly within it), whatever its size.
"""

from typing import Optional, Sequence

import torch
from detectron2.data.samplers import RepeatFactorTrainingSampler

__all__ = ["DatasetRatioTrainingSampler"]


class DatasetRatioTrainingSampler(RepeatFactorTrainingSampler):
    """Infinite stream of indices into the concatenation of datasets, by per-dataset shares.

    Index ``i`` of dataset ``d`` (of size ``n_d``) has probability ``r_d / (n_d * sum(r))``
    (:attr:`weights`), so dataset ``d`` supplies a share ``r_d / sum(r)`` of the stream. Built on
    Detectron2's ``RepeatFactorTrainingSampler``: each image's repeat factor is its probability
    times the total number of images, so an "epoch" holds about as many draws as there are
    images, each dataset's share of them (stochastic rounding of the fractional factors), in a
    seeded shuffle; every worker generates the same stream and keeps its own slice.
    """

    def __init__(
        self, dataset_sizes: Sequence[int], ratios: Sequence[float], seed: Optional[int] = None
    ):
        """
        Args:
            dataset_sizes: number of images of each dataset, in concatenation order.
            ratios: one non-negative weight per dataset, at least one positive.
            seed: shared by all workers; None = a random seed shared via comm.
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
        self.weights = weights / weights.sum()  # (sum(dataset_sizes),) probability of each index
        super().__init__(self.weights * len(self.weights), shuffle=True, seed=seed)
