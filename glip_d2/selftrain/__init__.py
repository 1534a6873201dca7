"""GLIP self-training: a teacher grounds the noun phrases of image-caption pairs and the kept
boxes become a grounding dataset (``python -m glip_d2.pseudo_label``)."""

from .collection import (
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
