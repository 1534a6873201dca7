"""LVIS v1 for GLIP: the 5k ``minival`` used by GLIP and MDETR, and GLIP's copy of val.

Detectron2's builtin ``lvis_v1_val`` / ``lvis_v1_train`` (``lvis/lvis_v1_{val,train}.json``) are
left as they are. GLIP evaluates on the jsons it distributes, which carry image file names:

* ``coco/annotations/lvis_v1_minival_inserted_image_name.json``: 5k images of LVIS v1 val
  (MDETR's "minival"), the set of GLIP's zero-shot LVIS numbers;
* ``coco/annotations/lvis_od_val.json``: all of LVIS v1 val.

Both are registered with ``evaluator_type="lvis"`` (AP, APr, APc, APf with Detectron2's
LVISEvaluator; FixedAP when ``TEST.BENCHMARK.LVIS_FIXED_AP``) and LVIS v1 metadata:
``thing_classes`` are the category ``name`` fields (official GLIP prompts with these, cleaned;
Detectron2's builtin uses the first synonym, which differs for one category: "bull" vs
"horned_cow"), ``thing_frequency`` ("r"/"c"/"f" per contiguous id) and ``class_image_count``.
"""

import os
from typing import Dict, Optional

from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES
from detectron2.data.datasets.lvis_v1_category_image_count import LVIS_CATEGORY_IMAGE_COUNT

from .coco_json import register_detection_json

__all__ = ["LVIS_FILES", "lvis_v1_metadata", "lvis_file_name", "register_lvis"]

# Registered name -> (json, image root), relative to the datasets root.
LVIS_FILES: Dict[str, tuple] = {
    "lvis_v1_minival": ("coco/annotations/lvis_v1_minival_inserted_image_name.json", "coco"),
    "lvis_v1_val_glip": ("coco/annotations/lvis_od_val.json", "coco"),
}

# Federated-annotation fields kept in the dicts (LVIS training losses use them).
_IMAGE_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")


def lvis_v1_metadata() -> dict:
    """LVIS v1 vocabulary metadata (no json needed): names, id map, frequency groups."""
    categories = sorted(LVIS_CATEGORIES, key=lambda c: c["id"])
    return {
        "thing_classes": [c["name"] for c in categories],
        "thing_dataset_id_to_contiguous_id": {c["id"]: k for k, c in enumerate(categories)},
        "thing_frequency": [c["frequency"] for c in categories],
        "class_image_count": LVIS_CATEGORY_IMAGE_COUNT,
    }


def lvis_file_name(image_root: str, file_name: Optional[str], coco_url: Optional[str]) -> str:
    """Image path of an LVIS image.

    ``file_name`` with a folder ("val2017/000000397133.jpg") is used as is; otherwise the split
    folder comes from ``coco_url`` (".../train2017/000000155379.jpg"), as Detectron2 does.
    """
    if file_name and "/" in file_name:
        return os.path.join(image_root, file_name)
    if coco_url:
        split_folder, base = coco_url.split("/")[-2:]
        return os.path.join(image_root, split_folder, base)
    return os.path.join(image_root, file_name)


def register_lvis(
    name: str, json_file: str, image_root: str, metadata: Optional[dict] = None
) -> None:
    """Register an LVIS v1 json (minival, GLIP's val, or any LVIS v1-format json).

    Args:
        name: the new dataset name (never a Detectron2 builtin such as ``lvis_v1_val``).
        json_file: the LVIS json.
        image_root: the folder holding ``train2017/`` and ``val2017/`` (COCO's images).
        metadata: extra metadata; the LVIS v1 vocabulary is used unless it gives
            ``thing_classes`` (with ``thing_dataset_id_to_contiguous_id``).

    Raises:
        ValueError: if ``metadata`` gives one of the two keys without the other (its names
            would be read with LVIS v1's ids, or v1's names with its ids).
    """
    vocabulary_keys = {"thing_classes", "thing_dataset_id_to_contiguous_id"}
    given = vocabulary_keys & set(metadata or {})
    if len(given) == 1:
        raise ValueError(
            f"register_lvis({name!r}): metadata gives {given.pop()} without "
            f"{(vocabulary_keys - set(metadata)).pop()}; "
            "a vocabulary of your own needs both (the names in contiguous order and the json's "
            "category id of each), or neither for LVIS v1's. DATASETS.CUSTOM with format 'lvis' "
            "reads both from the json."
        )
    register_detection_json(
        name,
        json_file,
        image_root,
        metadata={**lvis_v1_metadata(), **(metadata or {})},
        evaluator_type="lvis",
        file_name_fn=lvis_file_name,
        image_extra_keys=_IMAGE_KEYS,
        eager=False,
    )
