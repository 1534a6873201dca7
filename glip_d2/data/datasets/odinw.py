"""ODinW (Object Detection in the Wild): the 13- and 35-dataset suites as COCO-format datasets.

ODinW-13 is the suite of the GLIP paper, ODinW-35 the one of the CVinW workshop (ELEVATER).
Both come from GLIP's release (``odinw/download.py`` in microsoft/GLIP), one folder per dataset
under an ``odinw/`` root, with the background category already removed from the jsons
(``annotations_without_background.json``). Each dataset is registered once per split present as
``odinw_<key>_<split>`` (split: train, val, test, minival), evaluated with COCOEvaluator
(``evaluator_type="odinw"``: AP per dataset; :func:`glip_d2.evaluation.odinw_suite_summary`
averages a suite). The prompt is the dataset's category names (``thing_classes``), as in GLIP
with ``DATASETS.USE_OVERRIDE_CATEGORY``: those names equal the jsons' (the release's override
lists were checked), except that names must be usable as prompt labels here: a blank name
becomes "object" and a name repeated after stripping spaces gets a number ("o" and "o " in
boggleBoards become "o" and "o 2").

GLIP evaluates each dataset on the split its config names (``TEST``): "val", or "minival" for
the large ones; :func:`odinw_eval_names` gives those dataset names for a suite.
"""

import logging
import os
from typing import Dict, List, NamedTuple, Optional

from detectron2.data import DatasetCatalog

from .coco_json import register_detection_json

__all__ = [
    "ODINW_DATASETS",
    "ODINW_SUITES",
    "odinw_dataset_name",
    "odinw_eval_names",
    "odinw_prompt_names",
    "register_odinw",
    "register_odinw_folder",
]

logger = logging.getLogger(__name__)


class OdinwDataset(NamedTuple):
    folder: str  # relative to the odinw root
    layout: str  # "split_dirs": <folder>/<split dir>/<json>; "export": <folder>/<split>_<json>
    eval_split: str  # the split GLIP's config evaluates on


_D, _E = "split_dirs", "export"
# key -> where it lives; folders as unpacked from GLIP's odinw_35 release.
ODINW_DATASETS: Dict[str, OdinwDataset] = {
    "AerialMaritimeDrone_large": OdinwDataset("AerialMaritimeDrone/large", _D, "val"),
    "AerialMaritimeDrone_tiled": OdinwDataset("AerialMaritimeDrone/tiled", _D, "val"),
    "AmericanSignLanguageLetters": OdinwDataset(
        "AmericanSignLanguageLetters/American Sign Language Letters.v1-v1.coco", _D, "val"
    ),
    "Aquarium": OdinwDataset("Aquarium/Aquarium Combined.v2-raw-1024.coco", _D, "val"),
    "BCCD": OdinwDataset("BCCD/BCCD.v3-raw.coco", _D, "val"),
    "ChessPieces": OdinwDataset("ChessPieces/Chess Pieces.v23-raw.coco", _D, "val"),
    "CottontailRabbits": OdinwDataset("CottontailRabbits", _D, "val"),
    "DroneControl": OdinwDataset("DroneControl/Drone Control.v3-raw.coco", _D, "minival"),
    "EgoHands_generic": OdinwDataset("EgoHands/generic", _D, "minival"),
    "EgoHands_specific": OdinwDataset("EgoHands/specific", _D, "minival"),
    "HardHatWorkers": OdinwDataset("HardHatWorkers/raw", _D, "val"),
    "MaskWearing": OdinwDataset("MaskWearing/raw", _D, "val"),
    "MountainDewCommercial": OdinwDataset("MountainDewCommercial", _D, "val"),
    "NorthAmericaMushrooms": OdinwDataset(
        "NorthAmericaMushrooms/North American Mushrooms.v1-416x416.coco", _D, "val"
    ),
    "OxfordPets_by-breed": OdinwDataset("OxfordPets/by-breed", _D, "minival"),
    "OxfordPets_by-species": OdinwDataset("OxfordPets/by-species", _D, "minival"),
    "PKLot": OdinwDataset("PKLot/640", _D, "minival"),
    "Packages": OdinwDataset("Packages/Raw", _D, "val"),
    "PascalVOC": OdinwDataset("PascalVOC", _D, "val"),
    "Raccoon": OdinwDataset("Raccoon/Raccoon.v2-raw.coco", _D, "val"),
    "ShellfishOpenImages": OdinwDataset("ShellfishOpenImages/raw", _D, "val"),
    "ThermalCheetah": OdinwDataset("ThermalCheetah", _D, "val"),
    "UnoCards": OdinwDataset("UnoCards/raw", _D, "minival"),
    "VehiclesOpenImages": OdinwDataset("VehiclesOpenImages/416x416", _D, "minival"),
    "WildfireSmoke": OdinwDataset("WildfireSmoke", _D, "val"),
    "boggleBoards": OdinwDataset("boggleBoards/416x416AutoOrient/export", _E, "val"),
    "brackishUnderwater": OdinwDataset("brackishUnderwater/960x540", _D, "minival"),
    "dice": OdinwDataset("dice/mediumColor/export", _E, "val"),
    "openPoetryVision": OdinwDataset("openPoetryVision/512x512", _D, "minival"),
    "pistols": OdinwDataset("pistols/export", _E, "val"),
    "plantdoc_100x100": OdinwDataset("plantdoc/100x100", _D, "val"),
    "plantdoc_416x416": OdinwDataset("plantdoc/416x416", _D, "val"),
    "pothole": OdinwDataset("pothole", _D, "val"),
    "selfdrivingCar": OdinwDataset("selfdrivingCar/fixedLarge/export", _E, "val"),
    "thermalDogsAndPeople": OdinwDataset("thermalDogsAndPeople", _D, "val"),
    "websiteScreenshots": OdinwDataset("websiteScreenshots", _D, "minival"),
}

ODINW_SUITES: Dict[str, List[str]] = {
    # GLIP paper, Table 3 / configs/odinw_13.
    "odinw_13": [
        "AerialMaritimeDrone_large",
        "Aquarium",
        "CottontailRabbits",
        "EgoHands_generic",
        "NorthAmericaMushrooms",
        "Packages",
        "PascalVOC",
        "pistols",
        "pothole",
        "Raccoon",
        "ShellfishOpenImages",
        "thermalDogsAndPeople",
        "VehiclesOpenImages",
    ],
    # configs/odinw_35/_all.json: every dataset above but plantdoc_100x100.
    "odinw_35": [k for k in ODINW_DATASETS if k != "plantdoc_100x100"],
}

# Split -> folder name in the "split_dirs" layout (PascalVOC has no test split: GLIP uses valid).
_SPLIT_DIRS = {"train": "train", "val": "valid", "test": "test", "minival": "mini_val"}
_JSON = "annotations_without_background.json"
_RAW_JSON = "_annotations.coco.json"  # a Roboflow export still holding its background entry


def odinw_dataset_name(key: str, split: str) -> str:
    """Registered name of an ODinW dataset split, e.g. ``odinw_Aquarium_val``."""
    return f"odinw_{key}_{split}"


def odinw_eval_names(suite: str) -> List[str]:
    """The dataset names GLIP evaluates a suite on (each dataset's val or minival split)."""
    if suite not in ODINW_SUITES:
        raise KeyError(f"Unknown ODinW suite {suite!r}; expected one of {sorted(ODINW_SUITES)}.")
    return [odinw_dataset_name(k, ODINW_DATASETS[k].eval_split) for k in ODINW_SUITES[suite]]


def odinw_prompt_names(names: List[str]) -> List[str]:
    """Category names usable as prompt labels: blank -> "object", repeats numbered."""
    out, seen = [], {}
    for name in names:
        name = " ".join(str(name).split()) or "object"
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} {seen[name]}")
    return out


def _split_files(folder: str, layout: str, split: str, key: str) -> Optional[tuple]:
    if layout == "export":
        json_file = os.path.join(folder, f"{split}_{_JSON}")
        return (json_file, folder, ()) if os.path.isfile(json_file) else None
    split_dir = os.path.join(folder, _SPLIT_DIRS[split])
    if key == "PascalVOC" and split == "test":
        split_dir = os.path.join(folder, _SPLIT_DIRS["val"])
    for name, skip in ((_JSON, ()), (_RAW_JSON, (0,))):
        json_file = os.path.join(split_dir, name)
        if os.path.isfile(json_file):
            return json_file, split_dir, skip
    return None


def _suites_of(key: str) -> List[str]:
    return [s for s, keys in ODINW_SUITES.items() if key in keys]


def register_odinw_folder(
    key: str, folder: str, layout: str = "split_dirs", eval_split: str = "val"
) -> List[str]:
    """Register the splits present in one ODinW-style dataset folder.

    Args:
        key: dataset key; names are ``odinw_<key>_<split>``.
        folder: the dataset folder: ``train/``, ``valid/``, ``test/``, ``mini_val/`` each with
            ``annotations_without_background.json`` (or a raw Roboflow ``_annotations.coco.json``,
            whose background category 0 is left out), or (``layout="export"``)
            ``<split>_annotations_without_background.json`` beside the images.
        layout: "split_dirs" or "export".
        eval_split: recorded as ``odinw_eval_split`` in the metadata.

    Returns:
        the registered names.
    """
    names = []
    for split in _SPLIT_DIRS:
        files = _split_files(folder, layout, split, key)
        if files is None:
            continue
        json_file, image_root, skip = files
        name = odinw_dataset_name(key, split)
        if name in DatasetCatalog.list():
            logger.warning(f"{name} is already registered; {json_file} is not registered again.")
            continue
        register_detection_json(
            name,
            json_file,
            image_root,
            metadata={
                "odinw_dataset": key,
                "odinw_suites": _suites_of(key),
                "odinw_eval_split": eval_split,
            },
            evaluator_type="odinw",
            rename=odinw_prompt_names,
            skip_category_ids=skip,
            eager=False,
        )
        names.append(name)
    return names


def register_odinw(root: str, keys: Optional[List[str]] = None) -> List[str]:
    """Register the ODinW datasets present under ``root`` (the folder holding ``Aquarium/``...).

    Args:
        root: the odinw root.
        keys: datasets to look for (default: all of :data:`ODINW_DATASETS`, i.e. both suites).

    Returns:
        the registered names.
    """
    names = []
    for key in keys or list(ODINW_DATASETS):
        spec = ODINW_DATASETS[key]
        names += register_odinw_folder(
            key, os.path.join(root, spec.folder), spec.layout, spec.eval_split
        )
    return names
