"""Benchmark and grounding datasets: one module per family, plus the registration of those present.

Importing this package registers (lazily) every real dataset found under ``$DETECTRON2_DATASETS``
(:mod:`.builtin_real`). The helpers register more:

* :func:`register_custom_coco` / ``DATASETS.CUSTOM``: any COCO-format json, detection-as-grounding
  (:func:`register_custom_lvis`: an LVIS-format json with its own vocabulary);
* :func:`register_objects365`, :func:`register_lvis`, :func:`register_odinw`;
* :func:`register_mdetr`, :func:`register_flickr30k`, :func:`register_refexp`: MDETR jsons;
* :func:`register_odvg` (and :func:`write_odvg_jsonl`): Grounding DINO's ODVG jsonl;
* :func:`register_caption_collection` / ``DATASETS.CAPTIONS``: image-caption pairs, no boxes;
* :func:`register_pseudo_labels` / ``DATASETS.PSEUDO_LABELS``: a self-training run's output.
"""

from . import builtin_real  # noqa: F401  (registers the datasets present under the root)
from ._utils import DatasetFormatError
from .builtin_real import register_all_real
from .captions import load_caption_collection, register_caption_collection
from .coco_json import load_detection_json, register_detection_json
from .custom import register_custom_coco, register_custom_lvis, register_datasets_from_config
from .lvis import lvis_v1_metadata, register_lvis
from .mdetr import load_mdetr_json, register_flickr30k, register_mdetr, register_refexp
from .objects365 import clean_objects365_name, register_objects365
from .odinw import ODINW_DATASETS, ODINW_SUITES, odinw_eval_names, register_odinw
from .odvg import load_odvg_jsonl, read_label_map, register_odvg, write_label_map, write_odvg_jsonl
from .pseudo_labels import register_pseudo_labels

__all__ = [
    "DatasetFormatError",
    "ODINW_DATASETS",
    "ODINW_SUITES",
    "clean_objects365_name",
    "load_caption_collection",
    "load_detection_json",
    "load_mdetr_json",
    "load_odvg_jsonl",
    "lvis_v1_metadata",
    "odinw_eval_names",
    "read_label_map",
    "register_all_real",
    "register_caption_collection",
    "register_custom_coco",
    "register_custom_lvis",
    "register_datasets_from_config",
    "register_detection_json",
    "register_flickr30k",
    "register_lvis",
    "register_mdetr",
    "register_objects365",
    "register_odinw",
    "register_odvg",
    "register_pseudo_labels",
    "register_refexp",
    "write_label_map",
    "write_odvg_jsonl",
]
