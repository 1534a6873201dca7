"""The one-stage GLIP of the demo config learns to name what it finds.

A few dozen training steps of configs/demo_glip_tiny_shapes.yaml (smaller images, same model)
on a handful of shapes images, then the name accuracy at the ATSS positives of those images
(docs/one_stage_demo.md): the right colour-shape name must win at most of them. With the
DyHead tower's plain convs at the official N(0, 0.01) init this stays near chance (the tower
output loses the colours the FPN carries; see the doc), so the test guards the fix.
"""
import random

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import detection_utils as utils
from detectron2.modeling import build_model

from glip_d2 import add_glip_config
from glip_d2.data import GroundingDatasetMapper
from glip_d2.data.builtin import load_shapes_json
from glip_d2.data.shapes import ALL_CLASSES, SEEN_CLASSES, generate_split
from glip_d2.engine import build_glip_optimizer
from glip_d2.evaluation.name_accuracy import name_accuracy_at_positives

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, NUM_IMAGES, ITERS, BATCH = 128, 8, 60, 4


def _demo_cfg(*overrides):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file("configs/demo_glip_tiny_shapes.yaml")
    cfg.merge_from_list([
        "INPUT.MIN_SIZE_TRAIN", f"({SIZE},)", "INPUT.MAX_SIZE_TRAIN", str(SIZE),
        "INPUT.MIN_SIZE_TEST", str(SIZE), "INPUT.MAX_SIZE_TEST", str(SIZE),
        "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "SOLVER.WARMUP_ITERS", "10", *overrides,
    ])
    return cfg


def train_and_measure(root, *overrides):
    """Train the demo GLIP on NUM_IMAGES shapes images; name accuracy at their positives."""
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    cfg = _demo_cfg(*overrides)
    json_file, image_root = generate_split(root, "train", NUM_IMAGES, SIZE)
    dicts = load_shapes_json(json_file, image_root, list(SEEN_CLASSES))
    model = build_model(cfg).train()
    optimizer = build_glip_optimizer(cfg, model)
    mapper = GroundingDatasetMapper(cfg, is_train=True, category_names=dict(enumerate(SEEN_CLASSES)))
    for it in range(ITERS):
        for group in optimizer.param_groups:  # linear warm-up, then the base LR
            group["lr"] = cfg.SOLVER.BASE_LR * min(1.0, (it + 1) / cfg.SOLVER.WARMUP_ITERS)
        batch = [mapper(dicts[(it * BATCH + j) % NUM_IMAGES]) for j in range(BATCH)]
        losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    test_mapper = GroundingDatasetMapper(cfg, is_train=False)
    inputs, names = [], []
    for d in dicts:
        x = test_mapper(d)
        boxes_only = [{k: v for k, v in a.items() if k != "segmentation"} for a in d["annotations"]]
        x["instances"] = utils.annotations_to_instances(boxes_only, (SIZE, SIZE))
        inputs.append(x)
        names.append([SEEN_CLASSES[a["category_id"]] for a in d["annotations"]])
    return name_accuracy_at_positives(model, inputs, list(ALL_CLASSES), names)["accuracy"]


@pytest.mark.heavy(60)
def test_demo_glip_learns_names(tmp_path):
    # The residual tower is the fix under test; the scorer reads the tower output as officially
    # (MODEL.ATSS.REGION_CONTEXT_CONVS 1 reaches 0.32 here against 0.59: docs/one_stage_demo.md).
    accuracy = train_and_measure(str(tmp_path), "MODEL.ATSS.REGION_CONTEXT_CONVS", "0")
    assert accuracy > 0.5, f"the right name wins at only {accuracy:.0%} of the ATSS positives"
