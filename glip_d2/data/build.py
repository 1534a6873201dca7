"""`build_grounding_train_loader`: the training loader, with per-dataset sampling ratios, record
checks at first load, and a data stream that resumes exactly (:mod:`glip_d2.data.stream`)."""

import logging

import torch
from detectron2.data import MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from detectron2.utils import comm

from .few_shot import sample_few_shot
from .sampler import DatasetRatioTrainingSampler
from .stream import ResumableTrainLoader
from .validate import check_training_records

__all__ = ["build_grounding_train_loader", "load_checked_train_dicts"]

logger = logging.getLogger(__name__)


# Detectron2 samplers that read DATASETS.TRAIN_REPEAT_FACTOR, a key its get_cfg() does not define,
# and reload DATASETS.TRAIN themselves (without the checks, skipped records and few-shot subsets
# of load_checked_train_dicts): glip_d2 offers the same through TRAIN_RATIOS.
_WEIGHTED_SAMPLERS = ("WeightedTrainingSampler", "WeightedCategoryTrainingSampler")


def _default_sampler(cfg, dataset):
    """The sampler Detectron2 builds for DATALOADER.SAMPLER_TRAIN (TrainingSampler,
    RandomSubsetTrainingSampler, ...), through its own config function."""
    try:
        from detectron2.data.build import _train_loader_from_config
    except ImportError:  # a Detectron2 without it: the default sampler
        return TrainingSampler(len(dataset))
    return _train_loader_from_config(cfg, mapper=lambda d: d, dataset=dataset)["sampler"]


def _category_repeat_factors(cfg, parts) -> torch.Tensor:
    """Detectron2's category repeat factors (DATALOADER.REPEAT_THRESHOLD / REPEAT_SQRT), counted
    within each dataset: category ids are contiguous per dataset, so id 0 of one dataset is
    another class than id 0 of the next (Detectron2's WeightedCategoryTrainingSampler counts per
    dataset too). A record without "annotations" (a caption collection) has factor 1; an
    annotation without "category_id" (grounding) counts as category 0, as the mapper reads it."""
    factors = [
        RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            [
                {"annotations": [{"category_id": a.get("category_id", 0)} for a in annos]}
                for annos in (d.get("annotations") or [] for d in part)
            ],
            cfg.DATALOADER.REPEAT_THRESHOLD,
            sqrt=cfg.DATALOADER.get("REPEAT_SQRT", True),
        )
        for part in parts
    ]
    return torch.cat(factors)


def _build_sampler(cfg, parts, dataset, names, ratios, seed):
    """The sampler of DATALOADER.SAMPLER_TRAIN and DATASETS.TRAIN_RATIOS over the records `parts`
    (one list per DATASETS.TRAIN entry; `dataset` is their concatenation).

    * no ratios: Detectron2's sampler; RepeatFactorTrainingSampler with the repeat factors of
      :func:`_category_repeat_factors` (for one dataset exactly Detectron2's);
    * ratios: :class:`DatasetRatioTrainingSampler`, images uniform within each dataset, or by
      their category repeat factors with RepeatFactorTrainingSampler.

    Raises:
        ValueError: for Detectron2's Weighted*TrainingSampler (their route in glip_d2 is
            TRAIN_RATIOS), and for a sampler that TRAIN_RATIOS would silently replace.
    """
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name in _WEIGHTED_SAMPLERS:
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN {name} is not supported by glip_d2's training loader (it "
            "reads DATASETS.TRAIN_REPEAT_FACTOR, which this Detectron2's config lacks, and reloads "
            "the datasets without glip_d2's record checks). Use DATASETS.TRAIN_RATIOS: one share "
            "per dataset (Detectron2's factor w per image of an n-image dataset is the ratio "
            "w * n); add DATALOADER.SAMPLER_TRAIN RepeatFactorTrainingSampler for "
            "WeightedCategoryTrainingSampler's category balancing within each dataset."
        )
    repeat = name == "RepeatFactorTrainingSampler"
    if ratios:
        if not repeat and name != "TrainingSampler":
            raise ValueError(
                f"DATASETS.TRAIN_RATIOS draws from the datasets by ratio, which does not combine "
                f"with DATALOADER.SAMPLER_TRAIN {name}; use TrainingSampler (images uniform within "
                "each dataset) or RepeatFactorTrainingSampler (by category repeat factors), or "
                "drop TRAIN_RATIOS."
            )
        sizes = [len(p) for p in parts]
        total = sum(ratios)
        shares = zip(names, sizes, ratios)
        logger.info(
            "Training datasets drawn by ratio: "
            + ", ".join(f"{n} ({s} images, {r / total:.1%})" for n, s, r in shares)
            + (", images by category repeat factors" if repeat else "")
        )
        weights = _category_repeat_factors(cfg, parts) if repeat else None
        return DatasetRatioTrainingSampler(sizes, ratios, seed=seed, image_weights=weights)
    if repeat:
        # seed as Detectron2's own config function gives it (cfg.SEED, -1 included)
        return RepeatFactorTrainingSampler(_category_repeat_factors(cfg, parts), seed=cfg.SEED)
    return _default_sampler(cfg, dataset)


def load_checked_train_dicts(cfg, mapper):
    """The records of each DATASETS.TRAIN entry, checked (``DATASETS.CHECK_RECORDS``) and, with
    ``DATASETS.SKIP_BAD_RECORDS``, without the bad ones; with ``DATASETS.FEW_SHOT`` k > 0, the
    k-shot subset of each detection dataset (:func:`~glip_d2.data.few_shot.sample_few_shot`,
    seeded by ``DATASETS.FEW_SHOT_SEED``, counting ``DATASETS.FEW_SHOT_MODE``).

    Returns:
        one list of records per DATASETS.TRAIN entry.
    """
    parts = []
    tokenizer = getattr(mapper, "tokenizer", None)
    level = cfg.DATASETS.get("CHECK_RECORDS", "full")
    shots = cfg.DATASETS.get("FEW_SHOT", 0)
    if shots < 0:
        raise ValueError(f"DATASETS.FEW_SHOT is {shots}; give k > 0 for k-shot subsets, or 0 for "
                         "the whole datasets.")
    for name in cfg.DATASETS.TRAIN:
        dicts = get_detection_dataset_dicts(
            [name], filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS, proposal_files=None
        )
        meta = MetadataCatalog.get(name)
        has_captions = any("caption" in d for d in dicts[:1])
        names = meta.get("thing_classes", None) if not has_captions else None
        source = f"dataset {name!r} ({meta.get('json_file', 'no json')})"
        parts.append(
            check_training_records(
                dicts,
                source,
                tokenizer=tokenizer,
                max_query_len=getattr(mapper, "max_query_len", 256),
                level=level,
                skip_bad=cfg.DATASETS.get("SKIP_BAD_RECORDS", False),
                category_names=names,
            )
        )
        if not parts[-1]:
            raise ValueError(f"{source} has no usable training records left.")
        if level != "none" and not has_captions and not any(d.get("annotations") for d in parts[-1]):
            # DATALOADER.FILTER_EMPTY_ANNOTATIONS False keeps images without boxes (negatives);
            # a detection dataset of nothing but such images trains no box at all
            raise ValueError(
                f"{source}: none of its {len(parts[-1])} training images has an annotation, so "
                "it would train no box (its annotations list is empty, or none of them belongs "
                "to a listed image). Give the json its boxes, or leave it out of DATASETS.TRAIN."
            )
        _check_mask_format(parts[-1], source, mapper)
        _check_masks_everywhere(parts[-1], source, mapper, cfg.MODEL.META_ARCHITECTURE)
        if shots > 0 and has_captions:
            logger.warning(f"DATASETS.FEW_SHOT {shots}: {source} is a grounding (caption) dataset, "
                           "which has no classes to count shots of; it is used whole.")
        if shots > 0 and not has_captions:
            categories = range(len(names)) if names else None
            parts[-1] = sample_few_shot(
                parts[-1], shots, cfg.DATASETS.get("FEW_SHOT_SEED", 0), categories, source,
                mode=cfg.DATASETS.get("FEW_SHOT_MODE", "official"),
            )
    _check_some_masks(parts, mapper)
    return parts


def _check_mask_format(dicts, source: str, mapper) -> None:
    """Masks the mapper keeps must fit its INPUT.MASK_FORMAT: "polygon" cannot hold an RLE (or a
    bitmask array), which Detectron2's annotations_to_instances refuses only when it meets one in
    training, as "Failed to use mask_format=='polygon'" (crowd regions are dropped before).

    Raises:
        ValueError: naming the dataset, the first such image and the key to set.
    """
    if not getattr(mapper, "use_instance_mask", False):
        return
    if getattr(mapper, "instance_mask_format", "polygon") != "polygon":
        return
    for d in dicts:
        for anno in d.get("annotations") or []:
            segm = anno.get("segmentation")
            if anno.get("iscrowd", 0) or not (isinstance(segm, dict) or hasattr(segm, "shape")):
                continue
            raise ValueError(
                f"{source}: image {d.get('image_id')!r} has an RLE (or bitmask) segmentation, "
                "which INPUT.MASK_FORMAT 'polygon' (Detectron2's default) cannot hold; with "
                "MODEL.MASK_ON set INPUT.MASK_FORMAT bitmask to train on these masks."
            )


def _check_masks_everywhere(dicts, source: str, mapper, meta_architecture: str) -> None:
    """With a mask head, a two-stage model (Detectron2's ROI mask head, in LanguageAwareRCNN or
    GeneralizedRCNN) needs the masks of every image it trains on: an image whose boxes have no
    segmentation failed at the first batch that drew it, mid-training. One-stage GLIP's mask
    head trains such images on boxes only, so they pass there.

    Raises:
        ValueError: naming the dataset, how many images lack masks and the first of them.
    """
    if not getattr(mapper, "use_instance_mask", False) or _boxes_only_ok(meta_architecture):
        return
    box_only = [
        d for d in dicts
        if any(not a.get("iscrowd", 0) for a in d.get("annotations") or [])
        and not any(_has_mask(a) for a in d["annotations"] if not a.get("iscrowd", 0))
    ]
    if box_only:
        raise ValueError(
            f"{source}: {len(box_only)} of its {len(dicts)} training images have boxes without "
            f"any 'segmentation' (the first: image {box_only[0].get('image_id')!r}); the mask "
            f"head of {meta_architecture} (MODEL.MASK_ON) trains on the masks of every image "
            "and would fail at the first batch that holds one. Add their segmentations, leave "
            "those images (or the dataset) out of DATASETS.TRAIN, or set MODEL.MASK_ON False "
            "(one-stage GLIP's mask head trains such images on boxes only)."
        )


def _check_some_masks(parts, mapper) -> None:
    """With a mask head, warn when no training image has a mask: one-stage GLIP trains box-only
    images on boxes only, so its mask head keeps what it had (a pretrained mask model
    fine-tuned on boxes, or self-trained on pseudo-labels, which have no masks) while
    ``loss_mask`` is 0 at every step. Two-stage models refuse box-only images before this
    (:func:`_check_masks_everywhere`)."""
    if not getattr(mapper, "use_instance_mask", False):
        return
    if any(_has_mask(a) for part in parts for d in part for a in d.get("annotations") or []):
        return
    logger.warning(
        "MODEL.MASK_ON: no annotation of the training datasets has a 'segmentation', so the "
        "mask head does not train (loss_mask 0 at every step) and keeps its loaded or initial "
        "weights. Add a dataset with masks to DATASETS.TRAIN (its loader must keep them: "
        "Detectron2's load_coco_json and DATASETS.CUSTOM do), or set MODEL.MASK_ON False if no "
        "masks are wanted."
    )


def _has_mask(annotation) -> bool:
    """Whether an annotation has a segmentation: a non-empty polygon list or RLE dict, or a
    bitmask array (whose truth value numpy refuses)."""
    segm = annotation.get("segmentation")
    if segm is None:
        return False
    return segm.size > 0 if hasattr(segm, "size") and hasattr(segm, "shape") else bool(segm)


def _boxes_only_ok(meta_architecture: str) -> bool:
    """Whether the meta-architecture trains images without masks on boxes only (GLIP's says so
    with ``trains_box_only_images``; the data side does not import the model side)."""
    from detectron2.modeling import META_ARCH_REGISTRY

    try:
        arch = META_ARCH_REGISTRY.get(meta_architecture)
    except KeyError:  # not registered: the model build names it
        return True
    return bool(getattr(arch, "trains_box_only_images", False))


def _tag_with_dataset(parts, names) -> None:
    """Tag each record with its DATASETS.TRAIN entry (unless its loader tagged it already).

    The mapper prompts a detection record with its dataset's category names; loaders such as
    Detectron2's load_coco_json do not tag their records, and once the datasets are
    concatenated nothing else tells which dataset a record came from.
    """
    for name, part in zip(names, parts):
        for record in part:
            record.setdefault("dataset_name", name)


def build_grounding_train_loader(cfg, mapper):
    """The training loader of `cfg`: a :class:`~glip_d2.data.stream.ResumableTrainLoader`
    (SOLVER.IMS_PER_BATCH, DATALOADER.ASPECT_RATIO_GROUPING / NUM_WORKERS / SAMPLER_TRAIN /
    FILTER_EMPTY_ANNOTATIONS apply as in Detectron2).

    Without ``DATASETS.TRAIN_RATIOS`` images are drawn by Detectron2's sampler over the
    concatenated datasets; with it the datasets of ``DATASETS.TRAIN`` are drawn with those
    relative probabilities (:class:`DatasetRatioTrainingSampler`) instead of in proportion to
    their sizes. ``RepeatFactorTrainingSampler`` counts category frequencies within each dataset
    and combines with ratios; Detectron2's ``Weighted*TrainingSampler`` are refused (see
    :func:`_build_sampler`). Records are checked when loaded (:func:`load_checked_train_dicts`)
    and tagged with their ``"dataset_name"``, so each is prompted with its own dataset's category
    names.
    """
    ratios = tuple(cfg.DATASETS.get("TRAIN_RATIOS", ()))
    names = list(cfg.DATASETS.TRAIN)
    if ratios and len(ratios) != len(names):
        raise ValueError(
            f"DATASETS.TRAIN_RATIOS {ratios} needs one ratio per DATASETS.TRAIN entry {names}."
        )
    parts = load_checked_train_dicts(cfg, mapper)
    _tag_with_dataset(parts, names)
    dataset = [d for p in parts for d in p]
    seed = cfg.SEED if cfg.SEED >= 0 else None
    sampler = _build_sampler(cfg, parts, dataset, names, ratios, seed)
    world_size = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} must be divisible by the number of "
            f"processes ({world_size})."
        )
    return ResumableTrainLoader(
        dataset,
        sampler,
        mapper,
        batch_size=cfg.SOLVER.IMS_PER_BATCH // world_size,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        seed=seed,
        skip_bad_records=cfg.DATASETS.get("SKIP_BAD_RECORDS", False),
    )
