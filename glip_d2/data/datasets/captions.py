"""Image-caption collections (jsonl / CSV, the CC3M/SBU dump format) as box-free caption datasets:
the training data of RegionCLIP pretraining and the input of pseudo-labelling.

Config only: ``DATASETS.CAPTIONS: [[name, collection_file, image_root], ...]`` (registered by
:func:`~glip_d2.data.datasets.register_datasets_from_config`).
"""

import functools
from typing import List

from detectron2.data import DatasetCatalog, MetadataCatalog

from ._utils import check_new_name
from .caption_collection import read_caption_collection, resolve_image_path

__all__ = ["load_caption_collection", "register_caption_collection"]


def load_caption_collection(path: str, image_root: str) -> List[dict]:
    """Dataset dicts {file_name, image_id, caption} of a collection (no "annotations" key, so
    Detectron2's empty-image filter leaves them in)."""
    return [
        {
            "file_name": resolve_image_path(r.file_name, image_root),
            "image_id": r.image_id,
            "caption": r.caption,
        }
        for r in read_caption_collection(path)
    ]


def register_caption_collection(name: str, path: str, image_root: str) -> None:
    """Register a caption collection (read lazily) as dataset `name` (no boxes)."""
    check_new_name(name)
    DatasetCatalog.register(name, functools.partial(load_caption_collection, path, image_root))
    MetadataCatalog.get(name).set(
        caption_file=path, image_root=image_root, evaluator_type="captions"
    )
