"""Referring expressions for the generated shapes (RefCOCO-style data for the text-to-box head).

Each expression picks out one object of a shapes image, by the cheapest attribute that is
unambiguous in that image, chosen at random among those that are:

* ``colour``: "the red object" (no other object of that colour);
* ``shape``: "the circle" (no other circle);
* ``category``: "the red circle" (no other red circle);
* ``size``: "the small red circle" (two or more red circles; this one is clearly the smallest
  or the largest: at least 1.25 times smaller / larger in side than every other);
* ``relation``: "the red circle to the left of the blue square" (the blue square is the only
  one; no other red circle has that relation to it).

The json is MDETR's refexp format (one "image" per expression, ``caption`` = the expression,
one annotation with the referred box, its exact mask (``segmentation``, copied from the shapes
json) and ``tokens_positive`` = the span of the target's own words, e.g. "small red circle"),
written next to the shapes split whose images it uses::

    annotations/refexp_{split}.json      (+ refexp_{split}.complete, the parameters)

Splits follow the detection splits: ``train`` and ``val`` (seen combinations) and
``val_novel`` (only the five novel combinations). Registered names: ``shapes_refexp_train``
(training view), ``shapes_refexp_val`` and ``shapes_refexp_val_novel`` (refexp view, evaluated
by the RefCOCO evaluator: Acc@1 at IoU 0.5).
"""
import functools
import json
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..atomic_file import atomic_write_json
from .datasets.mdetr import load_mdetr_json
from .shapes import (
    ALL_CLASSES,
    SHAPES_GENERATOR_VERSION,
    SPLITS,
    generate_split,
    shapes_image_size,
    shapes_split_sizes,
)

# Bump when the expressions change; existing jsons are then rewritten.
REFEXP_VERSION = 1
KINDS = ("colour", "shape", "category", "size", "relation")
# Expressions per image at most (different targets).
MAX_PER_IMAGE = 2
_SIZE_RATIO = 1.25
_RELATIONS = ("to the left of", "to the right of", "above", "below")
# registered name -> (split, view)
SHAPES_REFEXP_DATASETS = {
    "shapes_refexp_train": ("train", "train"),
    "shapes_refexp_val": ("val", "refexp"),
    "shapes_refexp_val_novel": ("val_novel", "refexp"),
}


def relation(a: Sequence[float], b: Sequence[float], side: int) -> Optional[str]:
    """Relation of XYWH box a to XYWH box b from their centres: the dominant axis decides; None
    when the centres are within 0.1 of the image side of each other ("next to")."""
    dx = (a[0] + a[2] / 2) - (b[0] + b[2] / 2)
    dy = (a[1] + a[3] / 2) - (b[1] + b[3] / 2)
    if max(abs(dx), abs(dy)) < 0.1 * side:
        return None
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _options(objects: List[dict], t: int, side: int) -> Dict[str, Tuple[str, str]]:
    """Unambiguous descriptions of object t: kind -> (expression, the target's own words)."""
    colour, shape = objects[t]["category"].split(" ")
    cats = [o["category"] for o in objects]
    colours = [c.split(" ")[0] for c in cats]
    shapes = [c.split(" ")[1] for c in cats]
    out: Dict[str, Tuple[str, str]] = {}
    if colours.count(colour) == 1:
        out["colour"] = (f"the {colour} object", f"{colour} object")
    if shapes.count(shape) == 1:
        out["shape"] = (f"the {shape}", shape)
    same = [k for k, c in enumerate(cats) if c == cats[t]]
    if len(same) == 1:
        out["category"] = (f"the {colour} {shape}", f"{colour} {shape}")
        return out  # size and relation only tell apart objects of one category
    side_of = [math.sqrt(o["area"]) for o in objects]
    others = [side_of[k] for k in same if k != t]
    if side_of[t] * _SIZE_RATIO <= min(others):
        out["size"] = (f"the small {colour} {shape}", f"small {colour} {shape}")
    elif side_of[t] >= _SIZE_RATIO * max(others):
        out["size"] = (f"the large {colour} {shape}", f"large {colour} {shape}")
    for r, ref in enumerate(objects):
        if r == t or cats.count(ref["category"]) != 1:
            continue
        rel = relation(objects[t]["bbox"], ref["bbox"], side)
        if rel is None:
            continue
        if any(relation(objects[k]["bbox"], ref["bbox"], side) == rel for k in same if k != t):
            continue
        out["relation"] = (f"the {colour} {shape} {rel} the {ref['category']}", f"{colour} {shape}")
        break
    return out


def make_expressions(
    rng: np.random.Generator, objects: List[dict], side: int, max_per_image: int = MAX_PER_IMAGE
) -> List[dict]:
    """Expressions for up to `max_per_image` different objects of one image.

    Args:
        objects: dicts with "category" ("red circle"), "bbox" (XYWH) and "area".

    Returns:
        dicts with "target" (index), "kind", "expression" and "span" ([start, end) of the
        target's own words in the expression).
    """
    out = []
    for t in rng.permutation(len(objects)).tolist():
        options = _options(objects, t, side)
        if not options:
            continue
        kind = sorted(options)[rng.integers(len(options))]
        expression, words = options[kind]
        start = expression.index(words)
        out.append(
            {"target": t, "kind": kind, "expression": expression, "span": [start, start + len(words)]}
        )
        if len(out) == max_per_image:
            break
    return out


def refexp_paths(root: str, split: str) -> Tuple[str, str]:
    """(json_file, image_root) of a referring-expression split (not generated here)."""
    base = os.path.join(root, "shapes")
    return os.path.join(base, "annotations", f"refexp_{split}.json"), os.path.join(base, split)


def generate_refexp_split(
    root: str, split: str, num_images: Optional[int] = None, image_size: Optional[int] = None,
    seed: int = 0,
) -> Tuple[str, str]:
    """Write the referring expressions of a shapes split (generating the split first if needed)
    unless an identical json is there. Returns (json_file, image_root)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown shapes split {split!r}; expected one of {SPLITS}.")
    shapes_json, image_root = generate_split(root, split, num_images, image_size, seed)
    json_file, _ = refexp_paths(root, split)
    marker = json_file[: -len(".json")] + ".complete"
    params = {
        "version": REFEXP_VERSION,
        "shapes_version": SHAPES_GENERATOR_VERSION,
        "shapes_json_mtime": os.path.getmtime(shapes_json),
        "seed": int(seed),
    }
    try:
        with open(marker) as f:
            if json.load(f) == params and os.path.isfile(json_file):
                return json_file, image_root
    except (OSError, ValueError):
        pass
    with open(shapes_json) as f:
        shapes = json.load(f)
    by_image: Dict[int, List[dict]] = {}
    for a in shapes["annotations"]:
        by_image.setdefault(a["image_id"], []).append(
            {"category": ALL_CLASSES[a["category_id"] - 1], "bbox": a["bbox"], "area": a["area"],
             "category_id": a["category_id"], "segmentation": a.get("segmentation")}
        )
    images, annotations = [], []
    for im in shapes["images"]:
        objects = by_image.get(im["id"], [])
        rng = np.random.default_rng([seed, SPLITS.index(split), im["id"], 7])
        for e in make_expressions(rng, objects, im["width"]):
            o = objects[e["target"]]
            images.append({
                "id": len(images) + 1, "file_name": im["file_name"], "height": im["height"],
                "width": im["width"], "caption": e["expression"], "original_id": im["id"],
                "kind": e["kind"],
            })
            annotations.append({
                "id": len(annotations) + 1, "image_id": len(images), "bbox": o["bbox"],
                "area": o["area"], "iscrowd": 0, "category_id": o["category_id"],
                "tokens_positive": [e["span"]],
                **({"segmentation": o["segmentation"]} if o["segmentation"] else {}),
            })
    data = {
        "info": {"description": f"glip_d2 shapes referring expressions, split {split}", **params},
        "images": images, "annotations": annotations,
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(ALL_CLASSES)],
    }
    for path, obj in ((json_file, data), (marker, params)):  # json first, marker last
        atomic_write_json(path, obj)
    return json_file, image_root


def _load(name, split, view, root, num_images, image_size, seed):
    json_file, image_root = generate_refexp_split(root, split, num_images, image_size, seed)
    return load_mdetr_json(json_file, image_root, name, view=view)


def register_shapes_refexp(
    name: str, split: str, root: Optional[str] = None, num_images: Optional[int] = None,
    image_size: Optional[int] = None, seed: int = 0, evaluation: bool = True,
) -> None:
    """Register the referring expressions of a shapes split (generated on first load).

    Args:
        evaluation: MDETR's "refexp" view with the RefCOCO evaluator; False = training view.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown shapes split {split!r}; expected one of {SPLITS}.")
    if name in DatasetCatalog.list():
        return
    root = os.path.expanduser(root or os.getenv("DETECTRON2_DATASETS", "datasets"))
    num_images = shapes_split_sizes()[split] if num_images is None else int(num_images)
    view = "refexp" if evaluation else "train"
    DatasetCatalog.register(
        name,
        functools.partial(_load, name, split, view, root, num_images,
                          shapes_image_size(image_size), seed),
    )
    json_file, image_root = refexp_paths(root, split)
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, grounding_view=view,
        evaluator_type="refcoco" if evaluation else "grounding", generated_on_demand=True,
    )


def register_all_shapes_refexp(root: Optional[str] = None) -> None:
    for name, (split, view) in SHAPES_REFEXP_DATASETS.items():
        register_shapes_refexp(name, split, root, evaluation=view == "refexp")


if __name__.endswith(".shapes_refexp"):
    register_all_shapes_refexp()
