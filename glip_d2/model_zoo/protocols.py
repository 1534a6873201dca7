"""Evaluation protocols: config fragments (test datasets, vocabulary, chunking, detections per
image, evaluator options) applied on top of any model config.

    cfg = model_zoo.get_config("two_stage/faster_rcnn_R_50_FPN_glip")
    apply_protocol(cfg, "lvis_minival")          # or train_net.py --protocol lvis_minival

A protocol is ``configs/protocols/<name>.yaml`` (shipped with the package) or a path to such a
fragment; it sets only evaluation keys (never ``_BASE_``, the model or the training data).
"""
import os
from typing import List

import yaml

__all__ = ["apply_protocol", "get_protocol_file", "list_protocols"]

_FOLDER = "protocols"


def list_protocols() -> List[str]:
    """Names of the shipped protocols, sorted."""
    from . import list_configs

    prefix = _FOLDER + "/"
    return [n[len(prefix):] for n in list_configs() if n.startswith(prefix)]


def get_protocol_file(name: str) -> str:
    """Path of a protocol: a shipped name ("lvis_minival") or an existing yaml file.

    Raises:
        ValueError: for an unknown name, listing the shipped protocols.
    """
    if name.endswith(".yaml") and os.path.isfile(name):
        return name
    from . import configs_root

    path = os.path.join(configs_root(), _FOLDER, name + ".yaml")
    if not os.path.isfile(path):
        raise ValueError(
            f"Unknown evaluation protocol {name!r}; shipped protocols: {list_protocols()} (or give "
            "the path of a protocol yaml)."
        )
    return path


def apply_protocol(cfg, name: str):
    """Merge a protocol fragment into ``cfg`` (in place; returns it).

    Raises:
        ValueError: for an unknown protocol, a file that is no mapping of config keys (empty, a
            list), or a fragment with ``_BASE_`` (a protocol must fit any model, so it cannot
            inherit one).
    """
    path = get_protocol_file(name)
    with open(path) as f:
        fragment = yaml.safe_load(f)
    if not isinstance(fragment, dict) or not fragment:
        raise ValueError(
            f"Protocol {path} is empty or not a mapping of config keys; a protocol sets "
            "evaluation keys such as DATASETS.TEST (see configs/protocols/*.yaml)."
        )
    if "_BASE_" in fragment:
        raise ValueError(
            f"Protocol {path} has a _BASE_; a protocol is a fragment applied on top of a model "
            "config (use it with --config-file MODEL.yaml --protocol ...)."
        )
    # merged as the mapping it is: cfg.merge_from_file would guess a config VERSION for the
    # fragment and warn "has no VERSION" (a protocol sets evaluation keys only)
    cfg.merge_from_other_cfg(type(cfg)(fragment))
    return cfg
