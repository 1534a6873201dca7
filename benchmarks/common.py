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
