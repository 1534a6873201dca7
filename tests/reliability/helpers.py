"""Shared pieces of the reliability tests: a pickle that runs code when loaded, a tiny config."""

import os
import pathlib
import pickle

import numpy as np
import torch

from tests.helpers import tiny_cfg


class TouchPayload:
    """Unpickling this calls ``pathlib.Path(marker).touch()``: proof that code from a file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def write_evil_pkl(path, marker) -> str:
    """A Detectron2-style .pkl whose unpickling touches ``marker``."""
    data = {"model": {"w": np.zeros(3, dtype=np.float32), "x": TouchPayload(marker)},
            "__author__": "attacker"}
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)
    return str(path)


def fast_tiny_cfg():
    """tests.helpers.tiny_cfg with one fusion block and small test inputs."""
    cfg = tiny_cfg()
    cfg.MODEL.DYHEAD.NUM_CONVS = 1
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 112
    return cfg


def write_cfg(cfg, path) -> str:
    path = str(path)
    with open(path, "w") as f:
        f.write(cfg.dump())
    return path


def load_train_net():
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(root, "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def state_equal(a, b) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
