"""Objects365 v1 and v2 (COCO-format jsons) as detection-as-grounding data.

The dicts are plain detection dicts; ``GroundingDatasetMapper`` turns each into a training
prompt with GLIP's policy (the image's categories plus ``INPUT.GROUNDING.RANDOM_SAMPLE_NEG``
sampled absent ones, shuffled, within the token budget). ``thing_classes`` hold the cleaned
names (the prompt text); the json's names stay in ``thing_classes_raw``.

The jsons are large (v2 train: 1.7M images, 25M boxes), so registration reads nothing: the names
come from the parse cache once the json has been loaded once, and until then are recorded on
first load (see :mod:`glip_d2.data.datasets._utils`).
"""

import os
import re
from typing import Optional

from ...text import clean_name
from .coco_json import register_detection_json

__all__ = [
    "OBJECTS365_FILES",
    "clean_objects365_name",
    "objects365_file_name",
    "register_objects365",
]

# (version, split) -> (json, image folder), relative to the datasets root.
OBJECTS365_FILES = {
    ("v2", "train"): ("objects365/annotations/zhiyuan_objv2_train.json", "objects365/train"),
    ("v2", "val"): ("objects365/annotations/zhiyuan_objv2_val.json", "objects365/val"),
    ("v1", "train"): ("objects365_v1/annotations/objects365_train.json", "objects365_v1/train"),
    ("v1", "val"): ("objects365_v1/annotations/objects365_val.json", "objects365_v1/val"),
}

# v2 jsons name images "images/v1/patch8/objects365_v1_00420917.jpg"; the release unpacks them
# to "<split>/patch8/objects365_v1_00420917.jpg".
_PATCH = re.compile(r"(patch\d+/[^/]+)$")
_SPACES = re.compile(r"\s+")


def clean_objects365_name(name: str) -> str:
    """The prompt text of an Objects365 category: :func:`~glip_d2.text.clean_name` (lower case,
    no ``_`` or parenthesised part) with spaces around "/" removed ("Cabinet / shelf" ->
    "cabinet/shelf")."""
    return _SPACES.sub(" ", clean_name(name).replace(" /", "/").replace("/ ", "/")).strip()


def _clean_all(names):
    return [clean_objects365_name(n) for n in names]


def objects365_file_name(image_root: str, file_name: Optional[str], coco_url=None) -> str:
    """Image path: ``<root>/patchN/<file>`` for v2 names, ``<root>/<file_name>`` otherwise."""
    match = _PATCH.search(file_name or "")
    return os.path.join(image_root, match.group(1) if match else file_name)


def register_objects365(
    name: str, json_file: str, image_root: str, metadata: Optional[dict] = None
) -> None:
    """Register an Objects365 (v1 or v2) json as detection-as-grounding.

    Args:
        name: the new dataset name.
        json_file: ``zhiyuan_objv2_{train,val}.json`` (v2) or ``objects365_{train,val}.json``
            (v1).
        image_root: the split's image folder (with ``patchN/`` subfolders for v2).
        metadata: extra metadata.
    """
    register_detection_json(
        name,
        json_file,
        image_root,
        metadata=metadata,
        rename=_clean_all,
        file_name_fn=objects365_file_name,
        eager=False,
    )
