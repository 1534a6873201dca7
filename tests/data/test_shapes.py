"""Tests of the generated "grounded shapes" dataset, its registration and its visualization."""

import json
import os
import uuid

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from glip_d2.data import builtin
from glip_d2.data.builtin import register_all_shapes, register_shapes_split
from glip_d2.data.shapes import (
    ALL_CLASSES,
    COLORS,
    NOVEL_CLASSES,
    SEEN_CLASSES,
    SHAPE_KINDS,
    generate_split,
    shapes_split_sizes,
)
from glip_d2.data.visualize import draw_dataset_dict, draw_grounding

N = 24  # images per split in the shared fixture: enough for every novel class to appear


@pytest.fixture(scope="module")
def root(module_tmp):
    root = str(module_tmp("datasets"))
    for split in ("train", "val_novel"):
        generate_split(root, split, num_images=N, image_size=224)
    return root


def _load(root, split):
    with open(os.path.join(root, "shapes", "annotations", f"{split}.json")) as f:
        return json.load(f)


def _read_rgb(root, split, file_name):
    return cv2.imread(os.path.join(root, "shapes", split, file_name))[:, :, ::-1].astype(int)


@pytest.fixture
def names():
    """Unique dataset names, unregistered afterwards."""
    made = []

    def make(tag):
        made.append(f"test_shapes_{tag}_{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield make
    for name in made:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def test_vocabulary_and_sizes(monkeypatch):
    assert len(ALL_CLASSES) == 25 and len(SEEN_CLASSES) == 20
    assert set(SEEN_CLASSES) | set(NOVEL_CLASSES) == set(ALL_CLASSES)
    # One novel combination per colour and per shape, each word still seen in training.
    assert sorted(c.split()[0] for c in NOVEL_CLASSES) == sorted(COLORS)
    assert sorted(c.split()[1] for c in NOVEL_CLASSES) == sorted(SHAPE_KINDS)
    assert {c.split()[0] for c in SEEN_CLASSES} == set(COLORS)
    assert {c.split()[1] for c in SEEN_CLASSES} == set(SHAPE_KINDS)
    monkeypatch.delenv("GLIP_D2_SHAPES_SCALE", raising=False)
    assert shapes_split_sizes() == {"train": 1500, "val": 200, "val_novel": 200, "train_novel": 200}
    assert shapes_split_sizes(0.01) == {"train": 15, "val": 2, "val_novel": 2, "train_novel": 2}
    monkeypatch.setenv("GLIP_D2_SHAPES_SCALE", "0.1")
    assert shapes_split_sizes() == {"train": 150, "val": 20, "val_novel": 20, "train_novel": 20}
    with pytest.raises(ValueError, match="> 0"):
        shapes_split_sizes(0)


def test_deterministic(tmp_path):
    def snapshot(root):
        base = os.path.join(root, "shapes")
        files = sorted(os.listdir(os.path.join(base, "val")))
        data = [open(os.path.join(base, "val", f), "rb").read() for f in files]
        return files, data, open(os.path.join(base, "annotations", "val.json"), "rb").read()

    a, b, c = (str(tmp_path / k) for k in "abc")
    generate_split(a, "val", 4, 160, seed=0)
    generate_split(b, "val", 4, 160, seed=0)
    generate_split(c, "val", 4, 160, seed=1)
    assert snapshot(a) == snapshot(b)
    assert len(snapshot(a)[0]) == 4
    assert snapshot(a)[1] != snapshot(c)[1] and snapshot(a)[2] != snapshot(c)[2]
    assert cv2.imread(os.path.join(a, "shapes", "val", "000000.png")).shape == (160, 160, 3)


def test_coco_json_fields(root):
    coco = _load(root, "train")
    assert [c["name"] for c in coco["categories"]] == list(ALL_CLASSES)
    assert [c["id"] for c in coco["categories"]] == list(range(1, 26))
    assert len(coco["images"]) == N
    per_image = {}
    for a in coco["annotations"]:
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
        assert a["iscrowd"] == 0 and a["area"] > 0
    assert sorted(per_image) == list(range(1, N + 1))  # every image has objects
    assert 1 <= min(per_image.values()) and max(per_image.values()) <= 4
    # pycocotools reads it and the ground truth scores AP = 1 against itself.
    gt = COCO(os.path.join(root, "shapes", "annotations", "train.json"))
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in coco["annotations"]
    ]
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_boxes_inside_and_match_pixels(root):
    coco = _load(root, "train")
    images = {im["id"]: im for im in coco["images"]}
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for image_id, annos in by_image.items():
        img = _read_rgb(root, "train", images[image_id]["file_name"])
        for a in annos:
            x, y, w, h = (int(v) for v in a["bbox"])
            assert x >= 0 and y >= 0 and x + w <= 224 and y + h <= 224 and w >= 10 and h >= 10
            rgb = np.array(COLORS[ALL_CLASSES[a["category_id"] - 1].split()[0]])
            near = np.abs(img - rgb).max(axis=2) < 40  # (H, W) pixels of the object's colour
            # At least 70% of the shape is visible inside its box ...
            assert near[y : y + h, x : x + w].sum() >= 0.7 * a["area"]
            # ... and the box is tight when no other object touches it.
            others = [b["bbox"] for b in annos if b is not a]
            if all(
                bx >= x + w or bx + bw <= x or by >= y + h or by + bh <= y
                for bx, by, bw, bh in others
            ):
                inside = near[y : y + h, x : x + w]
                assert inside[0].any() and inside[-1].any()
                assert inside[:, 0].any() and inside[:, -1].any()
        # No pixel of an object colour lies outside that colour's boxes.
        for colour, rgb in COLORS.items():
            near = np.abs(img - np.array(rgb)).max(axis=2) < 40
            for a in annos:
                if ALL_CLASSES[a["category_id"] - 1].startswith(colour + " "):
                    x, y, w, h = (int(v) for v in a["bbox"])
                    near[y : y + h, x : x + w] = False
            assert near.sum() <= 3


def test_caption_spans_name_their_objects(root):
    relations = 0
    for split in ("train", "val_novel"):
        coco = _load(root, split)
        captions = {im["id"]: im["caption"] for im in coco["images"]}
        for a in coco["annotations"]:
            colour, shape = ALL_CLASSES[a["category_id"] - 1].split()
            caption = captions[a["image_id"]]
            assert len(a["tokens_positive"]) >= 1
            for start, end in a["tokens_positive"]:
                assert 0 <= start < end <= len(caption)
                phrase = caption[start:end]
                assert phrase.startswith(colour + " ") and shape in phrase
        relations += sum(
            any(r in c for r in (" left of ", " right of ", " above ", " below "))
            for c in captions.values()
        )
    assert relations >= 3


def test_novel_combinations_only_in_val_novel(root):
    train = {ALL_CLASSES[a["category_id"] - 1] for a in _load(root, "train")["annotations"]}
    novel = {ALL_CLASSES[a["category_id"] - 1] for a in _load(root, "val_novel")["annotations"]}
    assert train and train <= set(SEEN_CLASSES)
    assert novel == set(NOVEL_CLASSES)
    assert _load(root, "val_novel")["categories"] == _load(root, "train")["categories"]


def test_regeneration_is_idempotent(tmp_path):
    root = str(tmp_path)
    json_file, image_root = generate_split(root, "val", 3)
    marker = os.path.join(root, "shapes", "annotations", "val.complete")
    stamp = os.stat(json_file).st_mtime_ns, os.stat(marker).st_mtime_ns
    assert generate_split(root, "val", 3) == (json_file, image_root)
    assert (os.stat(json_file).st_mtime_ns, os.stat(marker).st_mtime_ns) == stamp
    # Other parameters, or an older generator version, regenerate in place.
    generate_split(root, "val", 5)
    assert len(os.listdir(image_root)) == 5 and len(_load(root, "val")["images"]) == 5
    with open(marker) as f:
        params = json.load(f)
    with open(marker, "w") as f:
        json.dump(dict(params, version=-1), f)
    os.remove(os.path.join(image_root, "000004.png"))
    generate_split(root, "val", 5)
    assert len(os.listdir(image_root)) == 5
    assert not [f for f in os.listdir(os.path.join(root, "shapes")) if f.startswith(".val-")]


def test_register_and_load(tmp_path, names):
    root = str(tmp_path)
    det, ground, novel = names("det"), names("ground"), names("novel")
    register_shapes_split(det, "train", root, num_images=5)
    register_shapes_split(ground, "train", root, num_images=5, grounding=True)
    register_shapes_split(novel, "val_novel", root, num_images=4)
    meta = MetadataCatalog.get(det)
    # Training never sees a novel name; evaluation prompts with all of them.
    assert meta.thing_classes == list(SEEN_CLASSES) and meta.evaluator_type == "coco"
    assert MetadataCatalog.get(novel).thing_classes == list(ALL_CLASSES)
    assert meta.novel_classes == list(NOVEL_CLASSES) and meta.all_classes == list(ALL_CLASSES)
    assert meta.json_file == os.path.join(root, "shapes", "annotations", "train.json")
    assert meta.generated_on_demand and not os.path.exists(meta.json_file)  # lazy

    dicts = DatasetCatalog.get(det)
    assert len(dicts) == 5 and os.path.exists(meta.json_file)
    coco = _load(root, "train")
    for d, image in zip(dicts, coco["images"]):
        assert set(d) == {"file_name", "height", "width", "image_id", "annotations", "dataset_name"}
        assert d["dataset_name"] == det and d["image_id"] == image["id"]
        assert os.path.exists(d["file_name"]) and d["height"] == d["width"] == 224
        json_names = [
            ALL_CLASSES[a["category_id"] - 1]
            for a in coco["annotations"]
            if a["image_id"] == d["image_id"]
        ]
        assert [meta.thing_classes[a["category_id"]] for a in d["annotations"]] == json_names
        for a in d["annotations"]:
            assert a["bbox_mode"] == BoxMode.XYWH_ABS and "tokens_positive" not in a
    grounded = DatasetCatalog.get(ground)
    assert [d["file_name"] for d in grounded] == [d["file_name"] for d in dicts]
    for d in grounded:
        for a in d["annotations"]:
            start, end = a["tokens_positive"][0]
            assert d["caption"][start:end].startswith(meta.thing_classes[a["category_id"]])
    novel_dicts = DatasetCatalog.get(novel)
    assert len(novel_dicts) == 4
    assert {ALL_CLASSES[a["category_id"]] for d in novel_dicts for a in d["annotations"]} <= set(
        NOVEL_CLASSES
    )


def test_registration_conflicts(tmp_path, names):
    name = names("dup")
    register_shapes_split(name, "val", str(tmp_path), num_images=2)
    register_shapes_split(name, "val", str(tmp_path), num_images=2)  # same: silently skipped
    with pytest.raises(ValueError, match="already registered with"):
        register_shapes_split(name, "val", str(tmp_path), num_images=3)
    with pytest.raises(ValueError, match="Unknown shapes split"):
        register_shapes_split(names("bad"), "test", str(tmp_path))
    foreign = names("foreign")
    DatasetCatalog.register(foreign, lambda: [])
    with pytest.raises(ValueError, match="someone else"):
        register_shapes_split(foreign, "val", str(tmp_path))
    # The builtin names are registered on import and re-registering them is a no-op.
    for name in builtin.SHAPES_DATASETS:
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).all_classes == list(ALL_CLASSES)
    assert MetadataCatalog.get("shapes_val_novel").thing_classes == list(ALL_CLASSES)
    register_all_shapes()


def test_visualization(tmp_path, names):
    img = np.full((64, 80, 3), 128, np.uint8)
    out = draw_grounding(img, [[10, 10, 40, 50]], ["red circle"], scores=[0.9])
    assert out.shape == (64, 80, 3) and (out != 128).any()
    assert draw_grounding(img, np.zeros((0, 4)), [], scale=2.0).shape == (128, 160, 3)
    with pytest.raises(ValueError, match="labels"):
        draw_grounding(img, [[0, 0, 1, 1]], [])
    # a name keeps its colour whatever the other boxes (video frames do not flicker)
    one = draw_grounding(img, [[10, 10, 40, 50]], ["cat"])
    two = draw_grounding(img, [[50, 10, 70, 50], [10, 10, 40, 50]], ["dog", "cat"])
    assert (one[10:50, 10] == two[10:50, 10]).all()  # the cat box's left edge, same colour

    name = names("vis")
    register_shapes_split(name, "train", str(tmp_path), num_images=1, grounding=True)
    d = DatasetCatalog.get(name)[0]
    plain = cv2.imread(d["file_name"])[:, :, ::-1]
    drawn = draw_dataset_dict(d, MetadataCatalog.get(name))
    assert drawn.shape == plain.shape and (drawn != plain).any(axis=2).sum() > 100
    # Mapper-style output: CHW BGR tensor + Instances.
    inst = Instances((224, 224))
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]]
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.gt_classes = torch.tensor([a["category_id"] for a in d["annotations"]])
    mapped = {
        "image": torch.from_numpy(np.ascontiguousarray(plain[:, :, ::-1].transpose(2, 0, 1))),
        "instances": inst,
    }
    assert (draw_dataset_dict(mapped, MetadataCatalog.get(name)) != plain).any()
