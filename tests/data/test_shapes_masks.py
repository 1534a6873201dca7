"""Exact instance masks of the generated shapes (generator version 2)."""
import hashlib
import json
import os

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util

from glip_d2.data.shapes import (
    COLORS,
    SHAPES_GENERATOR_VERSION,
    generate_split,
    iter_split,
)

# sha256 of (category, box, area) of every object and every caption in the first 40 images of
# each split, recorded with generator version 1: version 2 only adds masks.
VERSION_1 = {"train": "eefe662692f5efbc", "val": "0182dd75077b96d2", "val_novel": "cd6b04b50353dea3"}


@pytest.mark.parametrize("split", sorted(VERSION_1))
def test_boxes_and_captions_are_those_of_version_1(split):
    items = list(iter_split(split, 40))
    boxes = [[o["category"], list(o["bbox"]), o["area"]] for _, objs, _, _ in items for o in objs]
    caps = [c for _, _, c, _ in items]
    digest = hashlib.sha256(json.dumps([boxes, caps]).encode()).hexdigest()[:16]
    assert digest == VERSION_1[split]


def test_json_masks_are_the_exact_visible_pixels(tmp_path):
    assert SHAPES_GENERATOR_VERSION == 2
    json_file, image_root = generate_split(str(tmp_path), "train", num_images=12, image_size=224)
    with open(json_file) as f:
        coco = json.load(f)
    assert coco["info"]["generator_version"] == 2
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    occluded = 0
    for im in coco["images"]:
        rgb = cv2.imread(os.path.join(image_root, im["file_name"]))[:, :, ::-1].astype(int)
        anns = by_image[im["id"]]
        masks = [mask_util.decode(a["segmentation"]).astype(bool) for a in anns]
        for a, m in zip(anns, masks):
            assert m.shape == (224, 224) and m.any()
            x, y, w, h = a["bbox"]
            ys, xs = np.nonzero(m)
            # inside the whole-shape box; the box is tight unless a later shape hides an edge
            assert xs.min() >= x and ys.min() >= y and xs.max() < x + w and ys.max() < y + h
            assert m.sum() <= a["area"]
            occluded += int(m.sum() < a["area"])
            # every mask pixel has the shape's colour (+-12 jitter, +-~10 grain)
            colour = COLORS[coco["categories"][a["category_id"] - 1]["name"].split(" ")[0]]
            assert np.abs(rgb[m].mean(0) - colour).max() < 15
        # instances never share a pixel
        assert (np.sum(masks, axis=0) <= 1).all()
    assert len(coco["annotations"]) > 12
