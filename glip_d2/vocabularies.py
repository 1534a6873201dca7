"""Builtin detection vocabularies: "coco" (80 names) and "lvis" (LVIS v1, 1203 names).

A :class:`Vocabulary` keeps three aligned lists: ``names`` (prompt-ready, the labels shown to
users), ``prompt_names`` (the dataset's own names, what the model is given; they are unique while
five LVIS names collide after :func:`~glip_d2.text.clean_name`, e.g. "bow_(weapon)" and
"bow_(decorative_ribbons)" are both "bow", and official GLIP keeps both as separate labels) and
``category_ids`` (the dataset's ids, for COCO-format results files).
"""

from dataclasses import dataclass
from typing import List, Tuple

from .text import clean_name

__all__ = [
    "COCO_CLASSES",
    "COCO_CATEGORY_IDS",
    "Vocabulary",
    "builtin_vocabularies",
    "get_vocabulary",
]

# fmt: off
# COCO 2017 thing classes in category-id order.
COCO_CLASSES: Tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
# fmt: on

# fmt: off
# The COCO json category id of each name above (1..90 with gaps).
COCO_CATEGORY_IDS: Tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)
# fmt: on


@dataclass(frozen=True)
class Vocabulary:
    """A named detection vocabulary.

    Attributes:
        name: "coco" or "lvis".
        names: prompt-ready names (label order), shown as labels.
        prompt_names: the dataset's names, unique, given to the model (it cleans them itself).
        category_ids: the dataset's category id of each name.
    """

    name: str
    names: Tuple[str, ...]
    prompt_names: Tuple[str, ...]
    category_ids: Tuple[int, ...]

    def __len__(self) -> int:
        return len(self.names)


def _coco() -> Vocabulary:
    return Vocabulary("coco", COCO_CLASSES, COCO_CLASSES, COCO_CATEGORY_IDS)


def _lvis() -> Vocabulary:
    # Detectron2 ships the LVIS v1 categories (sorted by id 1..1203).
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    cats = sorted(LVIS_CATEGORIES, key=lambda c: c["id"])
    return Vocabulary(
        "lvis",
        tuple(clean_name(c["name"]) for c in cats),
        tuple(c["name"] for c in cats),
        tuple(c["id"] for c in cats),
    )


_BUILTIN = {"coco": _coco, "lvis": _lvis}


def builtin_vocabularies() -> List[str]:
    """Names accepted by :func:`get_vocabulary`."""
    return sorted(_BUILTIN)


def get_vocabulary(name: str) -> Vocabulary:
    """The builtin vocabulary called ``name`` ("coco" or "lvis", case-insensitive).

    Raises:
        ValueError: for an unknown name, or one that is not a string.
    """
    if not isinstance(name, str):
        raise ValueError(
            f"get_vocabulary expects a builtin vocabulary name (str), one of "
            f"{builtin_vocabularies()}; got a {type(name).__name__} ({name!r}). A list of your own "
            "names is a vocabulary already: pass it as the vocabulary itself."
        )
    key = name.strip().lower()
    if key not in _BUILTIN:
        raise ValueError(
            f"Unknown vocabulary {name!r}; builtin ones are {builtin_vocabularies()}, or pass a "
            "list of names."
        )
    return _BUILTIN[key]()
