"""Referring expressions for the shapes data: unambiguous, spans, splits, registration."""
import json
import re
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from glip_d2.data.shapes import NOVEL_CLASSES
from glip_d2.data.shapes_refexp import (
    SHAPES_REFEXP_DATASETS,
    generate_refexp_split,
    register_shapes_refexp,
    relation,
)
from glip_d2.evaluation import RefExpEvaluator

N = 30


@pytest.fixture(scope="module")
def root(module_tmp):
    root = str(module_tmp("datasets"))
    for split in ("train", "val_novel"):
        generate_refexp_split(root, split, num_images=N, image_size=224)
    return root


def _load(root, split):
    with open(f"{root}/shapes/annotations/refexp_{split}.json") as f:
        return json.load(f)


def _resolve(expression, objects, side):
    """Which objects an expression can mean, read from its words alone (independent of the
    generator): every stated attribute must hold."""
    words = re.match(
        r"the (small |large )?(\w+)(?: (\w+))?(?: (to the left of|to the right of|above|below) the (\w+) (\w+))?$",
        expression,
    )
    assert words, expression
    size, a, b, rel, rc, rs = words.groups()
    cats = [o["category"].split(" ") for o in objects]
    if b is None:  # "the circle"
        match = [k for k, (c, s) in enumerate(cats) if s == a]
    elif b == "object":  # "the red object"
        match = [k for k, (c, s) in enumerate(cats) if c == a]
    else:
        match = [k for k, (c, s) in enumerate(cats) if (c, s) == (a, b)]
    if size:
        sides = {k: np.sqrt(objects[k]["area"]) for k in match}
        pick = min if size == "small " else max
        match = [pick(sides, key=sides.get)]
    if rel:
        refs = [k for k, (c, s) in enumerate(cats) if (c, s) == (rc, rs)]
        assert len(refs) == 1
        match = [k for k in match if relation(objects[k]["bbox"], objects[refs[0]]["bbox"], side) == rel]
    return match


@pytest.mark.parametrize("split", ["train", "val_novel"])
def test_every_expression_names_exactly_its_object(root, split):
    refexp, shapes = _load(root, split), json.load(open(f"{root}/shapes/annotations/{split}.json"))
    objects = {}
    for a in shapes["annotations"]:
        cat = shapes["categories"][a["category_id"] - 1]["name"]
        objects.setdefault(a["image_id"], []).append({"category": cat, "bbox": a["bbox"], "area": a["area"]})
    anns = {a["image_id"]: a for a in refexp["annotations"]}
    kinds = set()
    assert len(refexp["images"]) >= N
    for im in refexp["images"]:
        objs = objects[im["original_id"]]
        target = anns[im["id"]]
        match = _resolve(im["caption"], objs, 224)
        assert len(match) == 1, im["caption"]
        assert objs[match[0]]["bbox"] == target["bbox"]
        (s, e), = target["tokens_positive"]
        words = im["caption"][s:e]
        assert words in im["caption"] and not words.startswith("the ")
        assert objs[match[0]]["category"].split(" ")[1] in words or words.endswith("object")
        if split == "val_novel":
            assert objs[match[0]]["category"] in NOVEL_CLASSES
        kinds.add(im["kind"])
    if split == "train":
        assert kinds == {"colour", "shape", "category", "size", "relation"}


def test_generation_is_deterministic_and_cached(root, tmp_path):
    json_file, _ = generate_refexp_split(root, "train", num_images=N, image_size=224)
    again, _ = generate_refexp_split(str(tmp_path), "train", num_images=N, image_size=224)
    a, b = json.load(open(json_file)), json.load(open(again))
    assert a["images"] == b["images"] and a["annotations"] == b["annotations"]


def test_registered_splits_load_and_score_with_the_refcoco_evaluator(root):
    assert set(SHAPES_REFEXP_DATASETS) == {"shapes_refexp_train", "shapes_refexp_val", "shapes_refexp_val_novel"}
    assert MetadataCatalog.get("shapes_refexp_val").evaluator_type == "refcoco"
    assert MetadataCatalog.get("shapes_refexp_train").evaluator_type == "grounding"
    name = f"test_refexp_{uuid.uuid4().hex[:8]}"
    register_shapes_refexp(name, "val_novel", root=root, num_images=N, image_size=224)
    try:
        dicts = DatasetCatalog.get(name)
        assert len(dicts) >= N and all(len(d["annotations"]) == 1 for d in dicts)
        assert all(d["annotations"][0]["phrase_id"] == 0 for d in dicts)
        ev = RefExpEvaluator(name, distributed=False)
        ev.reset()
        for k, d in enumerate(dicts):
            x, y, w, h = d["annotations"][0]["bbox"]
            inst = Instances((d["height"], d["width"]))
            # the referred box for half the expressions, a wrong one for the others
            box = [x, y, x + w, y + h] if k % 2 == 0 else [x + w, y + h, x + 2 * w, y + 2 * h]
            inst.pred_boxes = Boxes(torch.tensor([box], dtype=torch.float32))
            inst.scores = torch.ones(1)
            inst.pred_classes = torch.zeros(1, dtype=torch.long)
            ev.process([{"image_id": d["image_id"]}], [{"instances": inst}])
        acc = ev.evaluate()["refexp"]["Acc@1"]
        assert acc == pytest.approx(100.0 * ((len(dicts) + 1) // 2) / len(dicts))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
