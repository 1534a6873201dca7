"""`DatasetRatioTrainingSampler`: draw training images so that each dataset gets a set share.

GLIP trains on mixtures (detection, grounding, pseudo-labelled captions) whose sizes differ by
orders of magnitude; a plain concatenation samples them by size. With ``DATASETS.TRAIN_RATIOS``
each dataset of ``DATASETS.TRAIN`` is drawn with probability proportional to its ratio (images
uniformly within it, or by their category repeat factors with ``DATALOADER.SAMPLER_TRAIN
RepeatFactorTrainingSampler``), whatever its size.
"""

from typing import Optional, Sequence

import torch
from detectron2.data.samplers import RepeatFactorTrainingSampler

__all__ = ["DatasetRatioTrainingSampler"]


class DatasetRatioTrainingSampler(RepeatFactorTrainingSampler):
    """Infinite stream of indices into the concatenation of datasets, by per-dataset shares.

    Index ``i`` of dataset ``d`` (of size ``n_d``) has probability ``r_d / (n_d * sum(r))``
    (:attr:`weights`), so dataset ``d`` supplies a share ``r_d / sum(r)`` of the stream; with
    ``image_weights`` ``w``, ``r_d / sum(r) * w_i / sum(w over d)`` instead (the same share, drawn
    within the dataset in proportion to ``w``, e.g. its category repeat factors). Built on
    Detectron2's ``RepeatFactorTrainingSampler``: each image's repeat factor is its probability
    times the total number of images, so an "epoch" holds about as many draws as there are
    images, each dataset's share of them (stochastic rounding of the fractional factors), in a
    seeded shuffle; every worker generates the same stream and keeps its own slice.
    """

    def __init__(
        self,
        dataset_sizes: Sequence[int],
        ratios: Sequence[float],
        seed: Optional[int] = None,
        *,
        image_weights: Optional[Sequence[float]] = None,
    ):
        """
        Args:
            dataset_sizes: number of images of each dataset, in concatenation order.
            ratios: one non-negative weight per dataset, at least one positive.
            seed: shared by all workers; None = a random seed shared via comm.
            image_weights: one non-negative weight per image of the concatenation, relative
                within its dataset (Detectron2's category repeat factors); None = uniform.
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
        if image_weights is None:
            parts = [
                torch.full((n,), float(r) / n, dtype=torch.float64)
                for n, r in zip(dataset_sizes, ratios)
                if n > 0
            ]
        else:
            parts = _within_dataset(dataset_sizes, ratios, image_weights)
        weights = torch.cat(parts + [torch.zeros(0, dtype=torch.float64)])
        # datasets with ratio 0 and size n > 0 contribute zeros; sizes of 0 contribute nothing
        self.weights = weights / weights.sum()  # (sum(dataset_sizes),) probability of each index
        super().__init__(self.weights * len(self.weights), shuffle=True, seed=seed)


def _within_dataset(dataset_sizes, ratios, image_weights):
    """Per dataset, its ratio spread over its images in proportion to their weights."""
    image_weights = torch.as_tensor(image_weights, dtype=torch.float64).flatten()
    if len(image_weights) != sum(dataset_sizes):
        raise ValueError(
            f"image_weights has {len(image_weights)} entries for {sum(dataset_sizes)} images; "
            "give one weight per image of the concatenated datasets."
        )
    if not (torch.isfinite(image_weights) & (image_weights >= 0)).all():
        raise ValueError("image_weights must be finite and non-negative.")
    parts, start = [], 0
    for d, (n, r) in enumerate(zip(dataset_sizes, ratios)):
        w = image_weights[start : start + n]
        start += n
        if n == 0:
            continue
        if r > 0 and not w.sum() > 0:
            raise ValueError(
                f"DATASETS.TRAIN entry {d} has a positive ratio but no positive image weight; "
                "set its ratio to 0 or give its images weights."
            )
        parts.append(w * (float(r) / w.sum()) if r > 0 else torch.zeros(n, dtype=torch.float64))
    return parts
