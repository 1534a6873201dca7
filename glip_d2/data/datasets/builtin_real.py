"""Registration of the real benchmark datasets found under the ``$DETECTRON2_DATASETS`` root.

Runs on import (like ``detectron2.data.datasets.builtin``) and registers, lazily, every dataset
whose annotation file is present; nothing is read but ``os.path`` checks. ``datasets/README.md``
lists the layout. COCO 2017 and Detectron2's ``lvis_v1_*`` are Detectron2 builtins and are not
touched.

Names (annotation file under the root; evaluator):

* ``objects365_v2_{train,val}`` (objects365/annotations/zhiyuan_objv2_*.json; coco),
  ``objects365_v1_{train,val}`` (objects365_v1/annotations/objects365_*.json; coco), and
  ``object365_train``, the name of GLIP's pre-training configs: v1 train if present, else v2;
* ``lvis_v1_minival`` (coco/annotations/lvis_v1_minival_inserted_image_name.json; lvis),
  ``lvis_v1_val_glip`` (coco/annotations/lvis_od_val.json; lvis);
* ``mixed_train_no_coco``, ``mixed_train`` (mdetr_annotations/final_mixed_train*.json; GoldG);
* ``flickr30k_{train,val,test}`` (mdetr_annotations/final_flickr_separateGT_<split>.json;
  flickr) and ``flickr30k_{train,val,test}_merged`` (final_flickr_mergedGT_<split>.json);
* ``refcoco{,+,g}_<split>`` (mdetr_annotations/finetune_refcoco{,+,g}_<split>.json; refcoco);
* ``odinw_<dataset>_<split>`` (odinw/<dataset folder>/...; odinw).

Train splits of Flickr30k and RefCOCO use the training view; the others the evaluation views
(see :mod:`.mdetr`).
"""

import logging
import os
from typing import Callable, List, Optional

from detectron2.data import DatasetCatalog

from .lvis import LVIS_FILES, register_lvis
from .mdetr import register_flickr30k, register_mdetr, register_refexp
from .objects365 import OBJECTS365_FILES, register_objects365
from .odinw import register_odinw

__all__ = ["register_all_real", "REFEXP_SPLITS"]

logger = logging.getLogger(__name__)

REFEXP_SPLITS = {
    "refcoco": ("train", "val", "testA", "testB"),
    "refcoco+": ("train", "val", "testA", "testB"),
    "refcocog": ("train", "val", "test"),
}
_GOLDG = {
    "mixed_train_no_coco": "final_mixed_train_no_coco.json",
    "mixed_train": "final_mixed_train.json",
}


def _add(names: List[str], name: str, json_file: str, register: Callable[[], None]) -> None:
    if not os.path.isfile(json_file):
        return
    if name in DatasetCatalog.list():
        logger.debug(f"{name} is already registered; {json_file} is not registered again.")
        return
    register()
    names.append(name)


def _flickr_images(root: str, split: str) -> str:
    # GLIP's layout has one folder per split; the Flickr30k release has all images in one.
    per_split = os.path.join(root, "flickr30k", "flickr30k_images", split)
    return per_split if os.path.isdir(per_split) else os.path.dirname(per_split)


def _flickr_entities(root: str) -> Optional[str]:
    folder = os.path.join(root, "flickr30k", "flickr30k_entities")
    ok = all(os.path.isdir(os.path.join(folder, d)) for d in ("Annotations", "Sentences"))
    return folder if ok else None


def register_all_real(root: Optional[str] = None) -> List[str]:
    """Register the datasets present under ``root``.

    Args:
        root: the datasets root; None = ``$DETECTRON2_DATASETS`` or "datasets".

    Returns:
        the names registered by this call (names already registered are skipped).
    """
    root = os.path.expanduser(root or os.getenv("DETECTRON2_DATASETS", "datasets"))
    names: List[str] = []

    def path(*parts):
        return os.path.join(root, *parts)

    for (version, split), (json_rel, image_rel) in OBJECTS365_FILES.items():
        name, json_file, images = f"objects365_{version}_{split}", path(json_rel), path(image_rel)
        _add(names, name, json_file, lambda: register_objects365(name, json_file, images))
    for version in ("v1", "v2"):  # the name GLIP's pre-training configs use
        json_rel, image_rel = OBJECTS365_FILES[(version, "train")]
        json_file, images = path(json_rel), path(image_rel)
        if os.path.isfile(json_file):
            _add(
                names,
                "object365_train",
                json_file,
                lambda: register_objects365("object365_train", json_file, images),
            )
            break

    for name, (json_rel, image_rel) in LVIS_FILES.items():
        json_file, images = path(json_rel), path(image_rel)
        _add(names, name, json_file, lambda: register_lvis(name, json_file, images))

    mdetr = path("mdetr_annotations")
    for name, file in _GOLDG.items():
        json_file = os.path.join(mdetr, file)
        _add(
            names,
            name,
            json_file,
            lambda: register_mdetr(
                name,
                json_file,
                path("gqa", "images"),
                image_roots={"coco": path("coco", "train2014")},
            ),
        )
    entities = _flickr_entities(root)
    for split in ("train", "val", "test"):
        for gt, suffix in (("separate", ""), ("merged", "_merged")):
            name = f"flickr30k_{split}{suffix}"
            json_file = os.path.join(mdetr, f"final_flickr_{gt}GT_{split}.json")
            meta = {"flickr_split": split, "flickr_gt_type": gt}
            _add(
                names,
                name,
                json_file,
                lambda: register_flickr30k(
                    name,
                    json_file,
                    _flickr_images(root, split),
                    evaluation=split != "train",
                    entities_dir=entities,
                    metadata=meta,
                ),
            )
    for dataset, splits in REFEXP_SPLITS.items():
        for split in splits:
            name = f"{dataset}_{split}"
            json_file = os.path.join(mdetr, f"finetune_{dataset}_{split}.json")
            _add(
                names,
                name,
                json_file,
                lambda: register_refexp(
                    name, json_file, path("coco", "train2014"), evaluation=split != "train"
                ),
            )

    odinw_root = path("odinw")
    if os.path.isdir(odinw_root):
        names += register_odinw(odinw_root)
    if names:
        logger.info(f"Registered {len(names)} datasets found under {root}.")
    return names


if __name__.endswith(".builtin_real"):
    # Registered on import, like detectron2.data.datasets.builtin.
    register_all_real()
