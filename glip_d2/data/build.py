"""`build_grounding_train_loader`: Detectron2's train loader, with per-dataset sampling ratios."""

import logging

from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts

from .sampler import DatasetRatioTrainingSampler

__all__ = ["build_grounding_train_loader"]

logger = logging.getLogger(__name__)


def build_grounding_train_loader(cfg, mapper):
    """The training loader of `cfg` (Detectron2's, so every DATALOADER key applies).

    Without ``DATASETS.TRAIN_RATIOS`` this is ``build_detection_train_loader``; with it the
    datasets of ``DATASETS.TRAIN`` are drawn with those relative probabilities
    (:class:`DatasetRatioTrainingSampler`) instead of in proportion to their sizes.
    """
    ratios = tuple(cfg.DATASETS.get("TRAIN_RATIOS", ()))
    if not ratios:
        return build_detection_train_loader(cfg, mapper=mapper)
    names = list(cfg.DATASETS.TRAIN)
    if len(ratios) != len(names):
        raise ValueError(
            f"DATASETS.TRAIN_RATIOS {ratios} needs one ratio per DATASETS.TRAIN entry {names}."
        )
    parts = [
        get_detection_dataset_dicts(
            [name], filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS, proposal_files=None
        )
        for name in names
    ]
    sizes = [len(p) for p in parts]
    total = sum(ratios)
    logger.info(
        "Training datasets drawn by ratio: "
        + ", ".join(f"{n} ({s} images, {r / total:.1%})" for n, s, r in zip(names, sizes, ratios))
    )
    dataset = [d for p in parts for d in p]
    return build_detection_train_loader(
        cfg,
        mapper=mapper,
        dataset=dataset,
        sampler=DatasetRatioTrainingSampler(sizes, ratios, seed=cfg.SEED if cfg.SEED >= 0 else None),
    )
