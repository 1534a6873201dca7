"""GLIP self-training: a teacher grounds the noun phrases of image-caption pairs and the kept
boxes become a grounding dataset.

* caption collections (jsonl / csv) and sharding: re-exported from
  :mod:`glip_d2.data.datasets.caption_collection`;
* ``teacher.py``: :class:`GroundingTeacher`, a model that grounds a caption's noun phrases;
* ``parts.py``: resumable, sharded part files and the merged output;
* ``pseudo_label.py``: the run and its command line (``python -m glip_d2.pseudo_label``).

The student reads the output through the data side
(:func:`glip_d2.data.datasets.register_pseudo_labels`, ``DATASETS.PSEUDO_LABELS``), which
imports nothing from here.
"""

from ..data.datasets.caption_collection import (
    CaptionRecord,
    read_caption_collection,
    resolve_image_path,
    shard_records,
    write_caption_collection,
)
from .parts import FINAL_JSON, FINAL_ODVG, FORMATS, SUMMARY_JSON, PartStore, atomic_write_json
from .teacher import GroundingTeacher

__all__ = [
    "CaptionRecord",
    "FINAL_JSON",
    "FINAL_ODVG",
    "FORMATS",
    "SUMMARY_JSON",
    "GroundingTeacher",
    "PartStore",
    "atomic_write_json",
    "read_caption_collection",
    "resolve_image_path",
    "shard_records",
    "write_caption_collection",
]
