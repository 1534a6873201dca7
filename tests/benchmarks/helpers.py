"""Tiny annotation files and hand-made predictions for the benchmark tests."""

import json

import torch
from detectron2.structures import Boxes, Instances


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return str(path)


def instances(boxes, scores, classes, size=(100, 100)):
    """Model-style output: XYXY boxes, scores, pred_classes (contiguous / phrase ids)."""
    inst = Instances(size)
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return {"instances": inst}


def coco_json(categories, images, annotations):
    """A COCO detection json from (id, name) categories, (id, file) images and
    (image_id, category_id, [x, y, w, h]) annotations; every image 100x100."""
    return {
        "categories": [{"id": i, "name": n} for i, n in categories],
        "images": [{"id": i, "file_name": f, "height": 100, "width": 100} for i, f in images],
        "annotations": [
            {
                "id": k + 1,
                "image_id": im,
                "category_id": c,
                "bbox": b,
                "area": b[2] * b[3],
                "iscrowd": 0,
            }
            for k, (im, c, b) in enumerate(annotations)
        ],
    }
