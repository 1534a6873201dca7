"""Builtin registration of the generated "grounded shapes" datasets (see ``shapes.py``).

Importing this module registers, lazily (nothing is generated until a dataset is loaded):

==========================  ==========  =====================================================
name                        split       dicts
==========================  ==========  =====================================================
``shapes_train``            train       detection: no "caption"; the mapper builds class prompts
``shapes_val``              val         detection, seen combinations only
``shapes_val_novel``        val_novel   detection, novel combinations only (open-vocab AP)
``shapes_train_grounding``  train       same images as shapes_train, plus image "caption" and
                                        per-annotation "tokens_positive" [[start, end]]
``shapes_train_novel``      train_novel detection, novel combinations only, 5-name vocabulary:
                                        the few-shot source for adapting to the novel classes
``shapes_val_novel_only``   val_novel   shapes_val_novel with the 5 novel names as vocabulary
==========================  ==========  =====================================================

The root is ``$DETECTRON2_DATASETS`` (default "datasets"), the sizes come from
:func:`~glip_d2.data.shapes.shapes_split_sizes` (``$GLIP_D2_SHAPES_SCALE``) and the image side
from ``$GLIP_D2_SHAPES_IMAGE_SIZE``; all are read when this module is imported.

Vocabulary (``thing_classes``): the 20 seen combinations for the train names, all 25 for the
val names (so the evaluation prompt holds every combination and COCOeval averages over the
categories present: seen ones in ``shapes_val``, novel ones in ``shapes_val_novel``).
``all_classes`` / ``seen_classes`` / ``novel_classes`` are in every name's metadata. Dicts are
tagged with "dataset_name" like :func:`~glip_d2.data.register.register_detection_as_grounding`.
"""

import functools
import json
import os
from typing import List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .shapes import (
    ALL_CLASSES,
    COLORS,
    NOVEL_CLASSES,
    SEEN_CLASSES,
    SPLITS,
    generate_split,
    shapes_image_size,
    shapes_paths,
    shapes_split_sizes,
)

# Registered dataset name -> (split, whether the dicts carry the grounding caption).
SHAPES_DATASETS = {
    "shapes_train": ("train", False),
    "shapes_val": ("val", False),
    "shapes_val_novel": ("val_novel", False),
    "shapes_train_grounding": ("train", True),
    "shapes_train_novel": ("train_novel", False),
}
# Views of a split with another vocabulary: name -> (split, thing_classes).
SHAPES_VIEWS = {
    # shapes_val_novel's images, detected with only the five novel names: the target task when
    # a model is adapted to the novel classes (few-shot source: shapes_train_novel).
    "shapes_val_novel_only": ("val_novel", NOVEL_CLASSES),
}


def shapes_vocabulary(split: str) -> List[str]:
    """``thing_classes`` of a split: seen combinations for "train", all of them otherwise.

    Training never sees a novel name, not even as a sampled negative in a detection prompt
    (that would teach the model that "purple star" never occurs); evaluation prompts with all
    combinations, so novel objects compete with every seen name.
    """
    if split == "train_novel":  # the novel classes' own training data (few-shot transfer)
        return list(NOVEL_CLASSES)
    return list(SEEN_CLASSES if split == "train" else ALL_CLASSES)


def _id_map(classes: List[str]) -> dict:
    """json category id (1..K over ALL_CLASSES) -> contiguous id in ``classes``."""
    return {ALL_CLASSES.index(c) + 1: k for k, c in enumerate(classes)}


def load_shapes_json(
    json_file: str,
    image_root: str,
    classes: List[str],
    dataset_name: Optional[str] = None,
    grounding: bool = False,
) -> List[dict]:
    """Load a shapes COCO json into Detectron2 dicts.

    Args:
        json_file: ``annotations/{split}.json``.
        image_root: folder of the split's PNGs.
        classes: the vocabulary; ``category_id`` becomes the index of the name in it.
        dataset_name: stored in each dict as "dataset_name" (the mapper takes that dataset's
            thing_classes for detection prompts).
        grounding: keep the image "caption" and each annotation's "tokens_positive";
            otherwise both are dropped so the dicts are plain detection data.

    Returns:
        list of dataset dicts.

    Raises:
        ValueError: if an annotation's category is not in ``classes``.
    """
    extra = ["tokens_positive"] if grounding else None
    dicts = load_coco_json(json_file, image_root, None, extra_annotation_keys=extra)
    id_map = _id_map(classes)
    captions = {}
    if grounding:
        with open(json_file) as f:
            captions = {im["id"]: im["caption"] for im in json.load(f)["images"]}
    for d in dicts:
        for a in d["annotations"]:
            if a["category_id"] not in id_map:
                raise ValueError(
                    f"{json_file}: image {d['image_id']} has a "
                    f"{ALL_CLASSES[a['category_id'] - 1]!r}, which is not in the vocabulary "
                    f"{classes}. Delete {os.path.dirname(json_file)} to regenerate the data."
                )
            a["category_id"] = id_map[a["category_id"]]
        if grounding:
            d["caption"] = captions[d["image_id"]]
        if dataset_name is not None:
            d["dataset_name"] = dataset_name
    return dicts


def _load_split(
    name: str, split: str, root: str, num_images: int, image_size: int, seed: int, grounding: bool,
    vocabulary: Optional[Tuple[str, ...]] = None,
) -> List[dict]:
    json_file, image_root = generate_split(root, split, num_images, image_size, seed)
    classes = list(vocabulary) if vocabulary else shapes_vocabulary(split)
    return load_shapes_json(json_file, image_root, classes, name, grounding)


def register_shapes_split(
    name: str,
    split: str,
    root: Optional[str] = None,
    num_images: Optional[int] = None,
    image_size: Optional[int] = None,
    seed: int = 0,
    grounding: bool = False,
    vocabulary: Optional[Sequence[str]] = None,
) -> None:
    """Register one shapes split under ``name`` (generated on first ``DatasetCatalog.get``).

    Registering the same name again with the same arguments is a no-op; with other
    arguments, or over a dataset this module did not register, it raises.

    Args:
        name: dataset name.
        split: "train", "val" or "val_novel".
        root: datasets root; None = ``$DETECTRON2_DATASETS`` or "datasets".
        num_images: None = ``shapes_split_sizes()[split]``.
        image_size: None = ``shapes_image_size()``.
        seed: generator seed.
        grounding: dicts carry "caption" and annotation "tokens_positive".
        vocabulary: thing_classes (must include every class of the split); None = the split's
            (:func:`shapes_vocabulary`).
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown shapes split {split!r}; expected one of {SPLITS}.")
    root = os.path.expanduser(root or os.getenv("DETECTRON2_DATASETS", "datasets"))
    num_images = shapes_split_sizes()[split] if num_images is None else int(num_images)
    vocabulary = tuple(vocabulary) if vocabulary else None
    loader = functools.partial(
        _load_split, name, split, root, num_images, shapes_image_size(image_size), seed, grounding,
        vocabulary,
    )
    if name in DatasetCatalog.list():
        old = DatasetCatalog[name]
        if not (isinstance(old, functools.partial) and old.func is _load_split):
            raise ValueError(
                f"Dataset {name!r} is already registered by someone else; glip_d2 will not "
                "override it. Pick another name for the shapes dataset."
            )
        if old.args != loader.args:
            raise ValueError(
                f"Shapes dataset {name!r} is already registered with (name, split, root, "
                f"num_images, image_size, seed, grounding)={old.args}, not {loader.args}. Set "
                "$DETECTRON2_DATASETS / $GLIP_D2_SHAPES_SCALE / $GLIP_D2_SHAPES_IMAGE_SIZE before "
                "importing glip_d2, or register under another name."
            )
        return
    json_file, image_root = shapes_paths(root, split)
    classes = list(vocabulary) if vocabulary else shapes_vocabulary(split)
    DatasetCatalog.register(name, loader)
    if not vocabulary:
        # COCOEvaluator reads its ground truth from json_file, whose 25 categories only fit the
        # split's own vocabulary; a view with another one is converted from its dicts instead.
        MetadataCatalog.get(name).set(json_file=json_file)
    MetadataCatalog.get(name).set(
        thing_classes=classes,
        thing_classes_clean=list(classes),  # already prompt-ready: lower case, no "_" or "()"
        thing_dataset_id_to_contiguous_id=_id_map(classes),
        thing_colors=[list(COLORS[c.split(" ")[0]]) for c in classes],
        all_classes=list(ALL_CLASSES),
        seen_classes=list(SEEN_CLASSES),
        novel_classes=list(NOVEL_CLASSES),
        evaluator_type="coco",
        image_root=image_root,
        generated_on_demand=True,  # engine.datasets_check: files appear on first load
        shapes_split=split,
    )


def register_all_shapes(
    root: Optional[str] = None, scale: Optional[float] = None, image_size: Optional[int] = None
) -> None:
    """Register :data:`SHAPES_DATASETS` (idempotent for identical arguments).

    Args:
        root: datasets root; None = ``$DETECTRON2_DATASETS`` or "datasets".
        scale: size multiplier; None = ``$GLIP_D2_SHAPES_SCALE`` or 1.
        image_size: image side; None = ``$GLIP_D2_SHAPES_IMAGE_SIZE`` or 224.
    """
    sizes = shapes_split_sizes(scale)
    for name, (split, grounding) in SHAPES_DATASETS.items():
        register_shapes_split(
            name, split, root, sizes[split], image_size, seed=0, grounding=grounding
        )
    for name, (split, classes) in SHAPES_VIEWS.items():
        register_shapes_split(name, split, root, sizes[split], image_size, seed=0, vocabulary=classes)


if __name__.endswith(".builtin"):
    # Registered on import, like detectron2.data.datasets.builtin.
    register_all_shapes()
