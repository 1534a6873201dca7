"""glip_d2's config keys, each under its own node so none changes an upstream Detectron2 key.

* :func:`add_glip_config` (``glip.py``): the GLIP model, text, fusion, head and solver keys; it
  also adds the two below, so it is the one call a config needs;
* :func:`add_dataset_config` (``datasets.py``): datasets by config and the benchmark evaluators;
* :func:`add_two_stage_config` (``two_stage.py``): language-aware R-CNN and RegionCLIP keys.
"""
from .datasets import add_dataset_config
from .glip import add_glip_config
from .two_stage import add_two_stage_config

__all__ = ["add_dataset_config", "add_glip_config", "add_two_stage_config"]
