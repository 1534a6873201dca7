"""``GroundingDatasetMapper``: Detectron2 dataset dicts -> GLIP model inputs (image, caption, boxes
and the tokens each box is grounded to)."""

import copy
import logging
import random
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..text import (
    apply_descriptions,
    build_training_prompt,
    create_positive_map,
    load_tokenizer,
    mentions_left_right,
    span_to_token_range,
    swap_left_right,
    tokenize,
    validate_spans,
)

from .class_descriptions import class_descriptions_from_config

__all__ = ["GroundingDatasetMapper"]

logger = logging.getLogger(__name__)

_FLIP_MODES = ("swap", "skip")


class GroundingDatasetMapper:
    """Map a dataset dict to GLIP's inputs, for grounding data and for detection data.

    Like Detectron2's ``DatasetMapper``: read the image, apply the augmentations, transform the
    boxes, drop crowd annotations (training) and boxes that became empty; with instance masks,
    an applied crop makes each box the bounding box of its cropped mask. On top of that:

    * **Grounding dicts** carry ``"caption"`` and, per annotation, ``"tokens_positive"`` (a list
      of ``[start, end)`` character spans) and optionally ``"phrase_id"``. ``gt_classes`` is the
      *phrase index*: annotations with the same ``phrase_id`` (or, without one, the same spans)
      share an index, numbered in order of first appearance; ``"phrase_spans"`` lists each
      phrase's spans. Annotations with no span are dropped (they ground nothing); a span outside
      the caption raises ``ValueError`` naming the image. Spans cut off by the token limit are
      clipped, and an annotation left with no span is dropped (official GLIP gives it an empty
      positive row).
    * **Detection dicts** (no caption) get a training prompt from the category names
      (:func:`~glip_d2.text.build_training_prompt`: positives + sampled negatives, shuffled,
      within MAX_QUERY_LEN tokens). ``gt_classes`` is the contiguous category id; boxes whose
      category did not fit the prompt are dropped. At test time detection dicts get no caption:
      the model prompts with its vocabulary.
    * **Horizontal flip and "left"/"right".** A flipped image makes "the dog on the left" wrong.
      ``flip_left_right="swap"`` (default) swaps the two words in the caption after a flip and
      recomputes every span (the words differ in length, so later offsets shift);
      ``"skip"`` leaves out ``T.RandomFlip`` for a caption that mentions either word (a flip
      from elsewhere, e.g. inside ``T.RandomApply``, is still followed by the swap). Detection
      prompts are category names and are never changed.

    Output: ``"image"`` (uint8 CHW), ``"height"``, ``"width"``; ``"caption"`` (str) for grounding
    dicts and, in training, for detection dicts; ``"phrase_spans"`` (one list of ``[start, end]``
    per phrase index) for grounding dicts; in training ``"instances"`` with ``gt_boxes``,
    ``gt_classes`` and ``gt_positive_map`` (bool ``N x max_query_len``, built with this mapper's
    tokenizer: the model must tokenize captions with the same tokenizer and MAX_QUERY_LEN).
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str,
        tokenizer: Union[str, object] = "bert-base-uncased",
        max_query_len: int = 256,
        separator: str = ". ",
        shuffle_categories: bool = True,
        num_negatives: int = 85,
        max_prompt_categories: int = -1,
        flip_left_right: str = "swap",
        category_names: Optional[Dict[int, str]] = None,
        dataset_names: Sequence[str] = (),
        use_instance_mask: bool = False,
        instance_mask_format: str = "polygon",
        class_descriptions: Optional[Dict[str, object]] = None,
        phrase_maps: bool = False,
    ):
        """
        Args:
            is_train: training (annotations, prompts, positive maps) or inference.
            augmentations: Detectron2 augmentations, applied in order.
            image_format: format for ``utils.read_image`` (e.g. "BGR").
            tokenizer: a fast tokenizer or a name for :func:`~glip_d2.text.load_tokenizer`.
            max_query_len: token budget of a caption and width of ``gt_positive_map``.
            separator: text between category names in detection prompts.
            shuffle_categories: random category order in detection prompts.
            num_negatives: absent categories sampled into a detection prompt (-1 = all).
            max_prompt_categories: cap on categories in a detection prompt (-1 = none).
            flip_left_right: "swap" or "skip" (see the class docstring).
            category_names: contiguous id -> name for detection dicts; None = looked up (on first
                use) in ``MetadataCatalog`` ``thing_classes``.
            dataset_names: the configured datasets. A dict tagged with ``"dataset_name"`` uses
                that dataset's names (an error if it has none and ``category_names`` is None);
                an untagged dict uses ``category_names`` or, with exactly one dataset, its
                names, and is an error otherwise.
            use_instance_mask: keep segmentations as ``gt_masks`` (two-stage Mask R-CNN heads).
            instance_mask_format: "polygon" or "bitmask" (INPUT.MASK_FORMAT).
            class_descriptions: dataset name -> its class descriptions (a list per class or a
                mapping name -> description, DATASETS.CLASS_DESCRIPTIONS): detection prompts
                then read prefix + name + suffix, the name's tokens being the positives.
            phrase_maps: in training, also output ``"phrase_map"`` for detection dicts: the bool
                ``P x max_query_len`` token map of every category name in the prompt, positive
                or negative (the phrase-level loss, MODEL.ATSS.PHRASE_LOSS_WEIGHT).
        """
        if flip_left_right not in _FLIP_MODES:
            raise ValueError(
                f"flip_left_right={flip_left_right!r} is not one of {_FLIP_MODES} "
                "(INPUT.GROUNDING.FLIP_LEFT_RIGHT)."
            )
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        # Used instead of the above for captions mentioning left/right in "skip" mode.
        self.augmentations_no_hflip = T.AugmentationList(
            [a for a in augmentations if not (isinstance(a, T.RandomFlip) and a.horizontal)]
        )
        self.image_format = image_format
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        self.max_query_len = max_query_len
        self.separator = separator
        self.shuffle_categories = shuffle_categories
        self.num_negatives = num_negatives
        self.max_prompt_categories = max_prompt_categories
        self.flip_left_right = flip_left_right
        self.category_names = dict(category_names) if category_names is not None else None
        # dataset name -> its (described) category names, looked up on first use
        self._names_by_dataset: Dict[str, Dict[int, str]] = {}
        self.dataset_names = tuple(dataset_names)
        self.use_instance_mask = use_instance_mask
        self.instance_mask_format = instance_mask_format
        self.class_descriptions = dict(class_descriptions or {})
        self.phrase_maps = phrase_maps
        mode = "training" if is_train else "inference"
        logger.info(f"[GroundingDatasetMapper] Augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        if "GROUNDING" not in cfg.INPUT or "LANGUAGE_BACKBONE" not in cfg.MODEL:
            raise KeyError(
                "The config has no INPUT.GROUNDING / MODEL.LANGUAGE_BACKBONE; call "
                "glip_d2.add_glip_config(cfg) before merging the yaml."
            )
        augs = utils.build_augmentation(cfg, is_train)
        if cfg.INPUT.CROP.ENABLED and is_train:
            augs.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        lang = cfg.MODEL.LANGUAGE_BACKBONE
        grounding = cfg.INPUT.GROUNDING
        fixed_prompt = cfg.MODEL.get("GLIP", {}).get("TUNING", "full") == "prompt"
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "tokenizer": lang.TOKENIZER_TYPE or lang.MODEL_TYPE,
            "max_query_len": lang.MAX_QUERY_LEN,
            "separator": grounding.SEPARATION_TOKENS,
            # Prompt tuning learns one fixed prompt: all classes, in label order, every image.
            "shuffle_categories": grounding.SHUFFLE_CATEGORIES and not fixed_prompt,
            "num_negatives": -1 if fixed_prompt else grounding.RANDOM_SAMPLE_NEG,
            "max_prompt_categories": -1 if fixed_prompt else grounding.MAX_PROMPT_CATEGORIES,
            "flip_left_right": grounding.FLIP_LEFT_RIGHT,
            "dataset_names": list(cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST),
            "use_instance_mask": cfg.MODEL.MASK_ON,
            "instance_mask_format": cfg.INPUT.MASK_FORMAT,
            "class_descriptions": class_descriptions_from_config(cfg),
            "phrase_maps": is_train and cfg.MODEL.get("ATSS", {}).get("PHRASE_LOSS_WEIGHT", 0.0) > 0,
        }

    # ------------------------------------------------------------------ category names
    def _category_names(self, dataset_dict) -> Dict[int, str]:
        """The category names a detection dict is prompted with: those of the dataset it is
        tagged with (``"dataset_name"``), else ``category_names``, else those of the one
        configured dataset. Never another dataset's names: with several datasets an untagged
        dict would be prompted with the wrong vocabulary (COCO boxes named with Objects365
        classes), so it is an error."""
        name = dataset_dict.get("dataset_name")
        if name is None:
            if self.category_names is not None:
                return self.category_names
            if len(self.dataset_names) != 1:
                raise ValueError(
                    f"Image {dataset_dict.get('image_id')!r} has no caption and no "
                    f"'dataset_name' tag, and the mapper serves {len(self.dataset_names)} "
                    f"datasets {list(self.dataset_names)}: it cannot tell whose category names "
                    "to prompt with. Tag every record with its dataset "
                    "(record['dataset_name'] = name; build_grounding_train_loader does) or pass "
                    "category_names to the mapper."
                )
            name = self.dataset_names[0]
        if name not in self._names_by_dataset:
            classes = MetadataCatalog.get(name).get("thing_classes")
            if not classes:
                if self.category_names is not None:  # given explicitly: the caller's vocabulary
                    return self.category_names
                raise ValueError(
                    f"Image {dataset_dict.get('image_id')!r} of dataset {name!r} has no caption, "
                    f"and dataset {name!r} has no thing_classes in its metadata (in this "
                    "process), so its boxes cannot be named in a prompt. Register it with "
                    "thing_classes (register_detection_as_grounding and the glip_d2 loaders do; "
                    "a lazily registered dataset gets them when loaded) or pass category_names "
                    "to the mapper."
                )
            self._names_by_dataset[name] = dict(enumerate(self._described(name, classes)))
        return self._names_by_dataset[name]

    def _described(self, dataset_name: str, classes):
        """A dataset's class names with its descriptions (DATASETS.CLASS_DESCRIPTIONS) applied."""
        return apply_descriptions(classes, self.class_descriptions.get(dataset_name))

    # ------------------------------------------------------------------ main entry
    def __call__(self, dataset_dict):
        """
        Args:
            dataset_dict: metadata of one image, in Detectron2 format (plus grounding fields).

        Returns:
            dict: the model input described in the class docstring.
        """
        dataset_dict = copy.deepcopy(dataset_dict)  # it will be modified by code below
        image_id = dataset_dict.get("image_id", dataset_dict.get("file_name"))
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)

        caption = dataset_dict.get("caption")
        annos = dataset_dict.pop("annotations", None)
        if caption is not None:
            annos, phrase_ids, spans = self._grounding_annotations(caption, annos or [], image_id)

        augmentations = self.augmentations
        if caption is not None and self.flip_left_right == "skip" and mentions_left_right(caption):
            augmentations = self.augmentations_no_hflip
        aug_input = T.AugInput(image)
        transforms = augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]  # h, w
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        if caption is not None:
            # In "skip" mode too: a flip the filter above cannot see (inside T.RandomApply, a
            # fixed HFlipTransform) still flipped the image.
            if _is_hflipped(transforms):
                caption, spans = swap_left_right(caption, spans)
            dataset_dict["caption"] = caption
            dataset_dict["phrase_spans"] = _phrase_spans(phrase_ids, spans)

        if not self.is_train or annos is None:
            return dataset_dict

        # Crowd boxes go, like in Detectron2 (grounding annotations were filtered above, with
        # their phrase ids, by the same test); masks only for two-stage models with a mask head,
        # no keypoints.
        annos = [a for a in annos if not _is_crowd(a, image_id)]
        for anno in annos:
            if not self.use_instance_mask:
                anno.pop("segmentation", None)
            anno.pop("keypoints", None)
        with_masks = sum(bool(a.get("segmentation")) for a in annos)
        if 0 < with_masks < len(annos):
            # Detectron2 looks at the first annotation only: a bare KeyError, or every mask of
            # the image silently dropped when a box-only annotation comes first
            raise ValueError(
                f"Image {image_id!r}: {len(annos) - with_masks} of its {len(annos)} annotations "
                "have no segmentation while the others do; with MODEL.MASK_ON an image's boxes "
                "need masks all or none. Add the missing segmentations, or drop them all to "
                "train that image on boxes only."
            )
        annos = [utils.transform_instance_annotations(a, transforms, image_shape) for a in annos]
        instances = utils.annotations_to_instances(annos, image_shape, mask_format=self.instance_mask_format)
        if instances.has("gt_masks") and _is_cropped(transforms):
            # A crop cuts the mask and the box alike, but the cut box is loose around the cut
            # mask (a triangle cut in half); Detectron2's DatasetMapper recomputes the boxes
            # from the masks when it crops with masks on, and so does this.
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        if caption is not None:
            instances.gt_classes = torch.as_tensor(phrase_ids, dtype=torch.int64)
        instances, keep = utils.filter_empty_instances(instances, return_mask=True)
        keep = keep.tolist()

        if caption is not None:
            spans = [s for s, k in zip(spans, keep) if k]
        else:
            caption, spans, in_prompt, label_spans = self._detection_prompt(dataset_dict, instances)
            instances = instances[torch.as_tensor(in_prompt, dtype=torch.bool)]
            dataset_dict["caption"] = caption
            if self.phrase_maps:
                # categories that read the same share one span (build_training_prompt): one row
                spans_in_order = dict.fromkeys(label_spans[c] for c in sorted(label_spans))
                phrases = [[span] for span in spans_in_order]
                dataset_dict["phrase_map"] = self._positive_map(caption, phrases, image_id)[0]
        positive_map, keep = self._positive_map(caption, spans, image_id)
        if not all(keep):
            instances = instances[torch.as_tensor(keep, dtype=torch.bool)]
        instances.gt_positive_map = positive_map
        dataset_dict["instances"] = instances
        return dataset_dict

    # ------------------------------------------------------------------ helpers
    def _grounding_annotations(self, caption: str, annos: List[dict], image_id):
        """Validate spans; drop crowd (training) and span-less annotations; number phrases."""
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"Image {image_id!r} has an empty caption ({caption!r}).")
        kept, phrase_ids, spans = [], [], []
        phrase_index: Dict[object, int] = {}
        for anno in annos:
            anno_spans = validate_spans(caption, anno.get("tokens_positive") or [], image_id)
            if not anno_spans or (self.is_train and _is_crowd(anno, image_id)):
                continue
            key = ("id", anno["phrase_id"]) if "phrase_id" in anno else tuple(sorted(anno_spans))
            phrase_ids.append(phrase_index.setdefault(key, len(phrase_index)))
            anno.setdefault("category_id", 0)
            kept.append(anno)
            spans.append(anno_spans)
        return kept, phrase_ids, spans

    def _detection_prompt(self, dataset_dict, instances):
        names = self._category_names(dataset_dict)
        positives = instances.gt_classes.tolist()
        try:
            caption, label_spans = build_training_prompt(
                names,
                positives,
                # Seeded from the global RNG, which Detectron2 seeds per data-loader worker.
                rng=random.Random(random.getrandbits(64)),
                shuffle=self.shuffle_categories,
                num_negatives=self.num_negatives,
                max_categories=self.max_prompt_categories,
                tokenizer=self.tokenizer,
                max_len=self.max_query_len,
                separator=self.separator,
            )
        except ValueError as error:
            raise ValueError(f"Image {dataset_dict.get('image_id')!r}: {error}") from error
        in_prompt = [c in label_spans for c in positives]
        spans = [[label_spans[c]] for c in positives if c in label_spans]
        return caption, spans, in_prompt, label_spans

    def _positive_map(self, caption: str, spans, image_id) -> Tuple[torch.Tensor, List[bool]]:
        """``(positive map of the kept annotations, keep flag per annotation)``."""
        tokenized = tokenize(self.tokenizer, [caption], self.max_query_len, pad_to_max=False)
        spans, keep = _clip_to_tokens(tokenized, caption, spans, self.max_query_len, image_id)
        try:
            positive_map = create_positive_map(tokenized, spans, self.max_query_len)
        except ValueError as error:
            raise ValueError(f"Image {image_id!r}, caption {caption!r}: {error}") from error
        return positive_map, keep


def _is_crowd(anno: dict, image_id) -> bool:
    """Whether an annotation is a crowd region (``iscrowd`` 1; absent = 0).

    Raises:
        ValueError: naming the image, for any other value (null, 2, "1", ...): readers do not
            agree on those (Detectron2 drops a null as crowd, a truthiness test keeps it), and
            the two crowd filters of the mapper must never disagree.
    """
    value = anno.get("iscrowd", 0)
    if value not in (0, 1):
        raise ValueError(
            f"Image {image_id!r}: an annotation has iscrowd {value!r}; it must be 0 or 1. Fix "
            "the record (or drop it with DATASETS.SKIP_BAD_RECORDS)."
        )
    return value == 1


def _is_cropped(transforms) -> bool:
    return any(isinstance(t, T.CropTransform) for t in transforms.transforms)


def _is_hflipped(transforms) -> bool:
    flips = sum(isinstance(t, T.HFlipTransform) for t in transforms.transforms)
    return flips % 2 == 1


def _phrase_spans(phrase_ids: List[int], spans: List[List[Tuple[int, int]]]):
    phrases: Dict[int, List[Tuple[int, int]]] = {}
    for phrase, anno_spans in zip(phrase_ids, spans):
        phrases.setdefault(phrase, [list(s) for s in anno_spans])
    return [phrases[i] for i in range(len(phrases))]


def _clip_to_tokens(tokenized, caption, spans, max_len, image_id):
    """Clip spans to the characters that survived truncation; report which annotations remain."""
    encoding = tokenized.encodings[0]
    if len(encoding.ids) < max_len:
        return spans, [True] * len(spans)
    offsets = zip(encoding.offsets, encoding.special_tokens_mask)
    covered = max(end for (_, end), special in offsets if not special)
    clipped, keep = [], []
    for anno_spans in spans:
        inside = [(s, min(e, covered)) for s, e in anno_spans if s < covered]
        inside = [s for s in inside if span_to_token_range(tokenized, s) is not None]
        keep.append(bool(inside))
        if inside:
            clipped.append(inside)
    if not all(keep):
        logger.warning(
            f"Image {image_id!r}: {keep.count(False)} boxes dropped, their phrases lie past the "
            f"{max_len}-token limit of caption {caption[:80]!r}..."
        )
    return clipped, keep
