"""Shared by the benchmark scripts: a random-weight model from a config, and result files."""
import json
import os

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from glip_d2 import add_glip_config


def build_random_model(config_file: str, device: str, opts=()):
    """The config's model with random weights (no text weights loaded, no test datasets), eval mode."""
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(["MODEL.DEVICE", device, "MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED", "False",
                         "DATASETS.TEST", "()"] + list(opts))
    torch.manual_seed(0)
    return build_model(cfg).eval()


def append_result(path: str, res: dict):
    """Print one result and append it as a JSON line to `path`."""
    print(json.dumps(res))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(res) + "\n")


def training_input(model, caption, boxes, spans, size, seed=0):
    """One training input like GroundingDatasetMapper's: random image, boxes (xyxy) each named by
    one [start, end) span of `caption`."""
    from detectron2.structures import Boxes, Instances

    from glip_d2.text import create_positive_map, tokenize

    g = torch.Generator().manual_seed(seed)
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.arange(len(boxes), dtype=torch.long)
    tok = tokenize(model.tokenizer, [caption], max_length=model.max_query_len, pad_to_max=True)
    inst.gt_positive_map = create_positive_map(tok, [[s] for s in spans], max_len=model.max_query_len)
    image = torch.randint(0, 255, (3, *size), generator=g, dtype=torch.uint8)
    return {"image": image, "caption": caption, "instances": inst}
