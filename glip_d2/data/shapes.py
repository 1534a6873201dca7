"""The embedded "grounded shapes" dataset: coloured shapes on mild textured backgrounds.

Real datasets cannot be downloaded in every environment, so the demo job trains and evaluates
on data generated here. Each image holds 1-4 flat-coloured shapes; the category of a shape is
"<colour> <shape>" (e.g. "red circle") and every image also carries an MDETR-style grounding
caption ("a small blue triangle to the left of a green square") whose ``tokens_positive`` char
spans name each box.

Open-vocabulary split: :data:`NOVEL_CLASSES` (one per colour and one per shape, so every word is
seen in training inside other combinations) never occur in ``train`` / ``val``;
``val_novel`` contains ONLY novel objects, so its COCO AP is the novel-combination AP. All splits
share one category list (:data:`ALL_CLASSES`, ids 1..K in that order).

Layout written under ``<root>/shapes/``::

    {split}/000000.png ...            RGB images
    annotations/{split}.json          COCO detection json + image "caption" +
                                      annotation "tokens_positive" [[start, end]] +
                                      exact instance masks ("segmentation", COCO RLE of
                                      the shape's visible pixels)
    annotations/{split}.complete      marker with the generator parameters (written last)

Generation is deterministic: image ``i`` of a split only depends on ``(seed, split, i)``, so a
smaller split is a prefix of the larger one.
"""

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

try:  # POSIX only; elsewhere concurrent first-use generation is simply not guarded.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

logger = logging.getLogger(__name__)

# Bump whenever the rendered images or the json change: existing data is then regenerated.
# 2: annotations carry "segmentation" (RLE); images, boxes and captions are those of version 1.
SHAPES_GENERATOR_VERSION = 2

# Saturated, mutually distant RGB colours.
COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 75, 225),
    "yellow": (240, 210, 25),
    "purple": (145, 45, 190),
}
SHAPE_KINDS: Tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

# One held-out combination per colour and per shape (a Latin-square diagonal).
NOVEL_CLASSES: Tuple[str, ...] = (
    "red cross",
    "green triangle",
    "blue square",
    "yellow circle",
    "purple star",
)
# Fixed vocabulary shared by every split; contiguous id = index, COCO category id = index + 1.
ALL_CLASSES: Tuple[str, ...] = tuple(f"{c} {s}" for c in COLORS for s in SHAPE_KINDS)
SEEN_CLASSES: Tuple[str, ...] = tuple(c for c in ALL_CLASSES if c not in NOVEL_CLASSES)

# "train_novel" holds novel combinations only, drawn like "train": the few-shot source for
# adapting a model to the novel classes (issue 13); never used by the pretraining demo.
SPLITS: Tuple[str, ...] = ("train", "val", "val_novel", "train_novel")
DEFAULT_SPLIT_SIZES: Dict[str, int] = {
    "train": 1500, "val": 200, "val_novel": 200, "train_novel": 200
}
DEFAULT_IMAGE_SIZE = 224
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 128, 512
# Environment overrides, read by shapes_split_sizes() / shapes_image_size().
SCALE_ENV = "GLIP_D2_SHAPES_SCALE"
IMAGE_SIZE_ENV = "GLIP_D2_SHAPES_IMAGE_SIZE"

# Shape extent as a fraction of the image side: 28-90 px at 224 px.
_SIZE_RANGE = (0.125, 0.4)
_NUM_OBJECTS_P = (0.2, 0.35, 0.3, 0.15)  # P(1 .. 4 objects)
_MIN_VISIBLE = 0.7  # an occluded shape keeps at least this fraction of its pixels
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
_PREFIXES = ("", "", "", "a picture of ", "an image with ", "a photo showing ")


def shapes_split_sizes(scale: Optional[float] = None) -> Dict[str, int]:
    """Number of images per split.

    Args:
        scale: multiplier of :data:`DEFAULT_SPLIT_SIZES`; None reads ``$GLIP_D2_SHAPES_SCALE``
            (default 1.0). Every split keeps at least one image.

    Returns:
        dict split -> number of images.
    """
    if scale is None:
        raw = os.environ.get(SCALE_ENV, "1.0")
        try:
            scale = float(raw)
        except ValueError:
            raise ValueError(f"${SCALE_ENV} must be a positive number, got {raw!r}.") from None
    if not scale > 0:
        raise ValueError(f"The shapes dataset scale must be > 0, got {scale}.")
    return {k: max(1, int(round(v * scale))) for k, v in DEFAULT_SPLIT_SIZES.items()}


def shapes_image_size(image_size: Optional[int] = None) -> int:
    """Image side in pixels: ``image_size`` or ``$GLIP_D2_SHAPES_IMAGE_SIZE`` or 224."""
    if image_size is None:
        raw = os.environ.get(IMAGE_SIZE_ENV, str(DEFAULT_IMAGE_SIZE))
        try:
            image_size = int(raw)
        except ValueError:
            raise ValueError(f"${IMAGE_SIZE_ENV} must be an integer, got {raw!r}.") from None
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"Shapes image size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {image_size}."
        )
    return image_size


def shapes_paths(root: str, split: str) -> Tuple[str, str]:
    """Return ``(json_file, image_root)`` of a split under ``root`` (not generated here)."""
    _check_split(split)
    base = os.path.join(root, "shapes")
    return os.path.join(base, "annotations", f"{split}.json"), os.path.join(base, split)


# ----------------------------------------------------------------------------- rendering
def _polygon(kind: str, size: float) -> np.ndarray:
    """(P, 2) float vertices of a shape centred on its bounding box, extent about ``size``."""
    if kind == "square":
        return np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * (size * 0.42)
    if kind == "triangle":
        a = np.radians([-90, 30, 150])
        # Vertices on a circle of radius 0.6 size, shifted down to centre the bounding box.
        return np.stack([np.cos(a), np.sin(a) + 0.25], axis=1) * (size * 0.6)
    if kind == "star":
        a = np.radians(-90 + 36 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45) * (size * 0.53)  # outer / inner tips
        return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    if kind == "cross":
        # Half of a plus sign with arms 1/3 of its extent wide; the other half is its mirror.
        half = np.array([(-1, -3), (1, -3), (1, -1), (3, -1), (3, 1), (1, 1)]) * (size / 6)
        return np.concatenate([half, -half])
    raise ValueError(f"Unknown shape kind {kind!r}; expected one of {SHAPE_KINDS}.")


def _shape_mask(kind: str, cx: float, cy: float, size: float, angle: float, side: int):
    """Boolean (side, side) mask of one shape rotated by ``angle`` radians."""
    mask = np.zeros((side, side), np.uint8)
    if kind == "circle":
        centre = (int(round(cx * 16)), int(round(cy * 16)))
        # shift=4: coordinates in 1/16 pixel, for sub-pixel placement.
        cv2.circle(mask, centre, int(round(size / 2 * 16)), 1, -1, cv2.LINE_8, 4)
        return mask.astype(bool)
    c, s = math.cos(angle), math.sin(angle)
    poly = _polygon(kind, size) @ np.array([[c, s], [-s, c]]) + np.array([cx, cy])
    cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return mask.astype(bool)


def _background(rng: np.random.Generator, side: int) -> np.ndarray:
    """Float32 (side, side, 3) RGB: low-saturation gradient, sometimes faint stripes, blotches."""
    c0, c1 = (
        np.float32(rng.uniform(100, 210)) + rng.uniform(-18, 18, 3).astype(np.float32)
        for _ in range(2)
    )
    theta = rng.uniform(0, 2 * math.pi)
    pos = np.arange(side, dtype=np.float32)
    t = pos[None, :] * np.float32(math.cos(theta)) + pos[:, None] * np.float32(math.sin(theta))
    t -= t.min()
    t *= np.float32(1.0 / max(float(t.max()), 1e-6))
    img = c0 + (c1 - c0) * t[..., None]
    if rng.random() < 0.35:
        phi, period, amp = rng.uniform(0, math.pi), rng.uniform(8, 24), rng.uniform(4, 8)
        wave = pos[None, :] * np.float32(math.cos(phi)) + pos[:, None] * np.float32(math.sin(phi))
        img += (np.float32(amp) * np.sin(wave * np.float32(2 * math.pi / period)))[..., None]
    # Smooth blotches: upsampled coarse noise (cheap to compress, unlike per-pixel noise).
    coarse = rng.standard_normal((side // 16 + 2, side // 16 + 2, 3), dtype=np.float32)
    img += cv2.resize(coarse * np.float32(5), (side, side), interpolation=cv2.INTER_LINEAR)
    return img


def _add_grain(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Mild luminance grain at half resolution (per-pixel RGB noise would triple PNG sizes)."""
    side = img.shape[0]
    half = rng.standard_normal((side // 2, side // 2), dtype=np.float32) * np.float32(3.0)
    img += cv2.resize(half, (side, side), interpolation=cv2.INTER_LINEAR)[..., None]
    return img


def _box_of(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """Tight XYXY box (x1, y1 exclusive) of a boolean mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _boxes_intersect(a, b, pad: int) -> bool:
    return a[0] - pad < b[2] and b[0] - pad < a[2] and a[1] - pad < b[3] and b[1] - pad < a[3]


def render_image(
    rng: np.random.Generator, side: int, classes: Sequence[str]
) -> Tuple[np.ndarray, List[dict]]:
    """Draw one image of 1-4 shapes whose categories are drawn from ``classes``.

    Args:
        rng: source of all randomness (the image is a pure function of its state).
        side: image height and width in pixels.
        classes: category names "<colour> <shape>" to sample from.

    Returns:
        (image, objects): uint8 RGB (side, side, 3) and, in drawing order, dicts with
        "category" (name), "bbox" (tight XYXY of the whole shape, x1/y1 exclusive),
        "area" (pixels of the whole shape) and "mask" (bool (side, side): the pixels the shape
        covers in the image, i.e. without the parts a later shape occludes).
    """
    img = _background(rng, side)
    top = np.full((side, side), -1, np.int16)  # index of the topmost object per pixel
    allow_overlap = rng.random() < 0.3
    lo, hi = _SIZE_RANGE[0] * side, _SIZE_RANGE[1] * side
    objects: List[dict] = []
    for _ in range(rng.choice(4, p=_NUM_OBJECTS_P) + 1):
        name = classes[rng.integers(len(classes))]
        colour, kind = name.split(" ")
        for _attempt in range(30):
            size = rng.uniform(lo, hi)
            cx, cy = rng.uniform(size / 2, side - size / 2, 2)
            mask = _shape_mask(kind, cx, cy, size, rng.uniform(-0.35, 0.35), side)
            box = _box_of(mask)
            if box[0] < 1 or box[1] < 1 or box[2] > side - 1 or box[3] > side - 1:
                continue
            if not allow_overlap:
                if any(_boxes_intersect(box, o["bbox"], 3) for o in objects):
                    continue
            else:
                new_top = np.where(mask, len(objects), top)
                if any(
                    np.count_nonzero(new_top == j) < _MIN_VISIBLE * o["area"]
                    for j, o in enumerate(objects)
                ):
                    continue
            top[mask] = len(objects)
            rgb = np.array(COLORS[colour], np.float32) + rng.uniform(-12, 12, 3).astype(np.float32)
            objects.append({"category": name, "bbox": box, "area": int(mask.sum()), "rgb": rgb})
            break
    for j, o in enumerate(objects):
        img[top == j] = o.pop("rgb")
        o["mask"] = top == j
    img = _add_grain(rng, img)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), objects


# ----------------------------------------------------------------------------- captions
def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "sh", "ch")) else "s")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_caption(
    rng: np.random.Generator, objects: Sequence[dict], side: int
) -> Tuple[str, List[List[List[int]]]]:
    """Build a caption naming every object and the char span of each object's phrase.

    Objects of the same category share one plural phrase ("two red circles"). A span covers
    exactly "<colour> <shape>" (or its plural), never the article, number or size word.

    Args:
        rng: random source for the template choice.
        objects: as returned by :func:`render_image`.
        side: image side, to decide "small" / "large" and relations.

    Returns:
        (caption, tokens_positive): tokens_positive[i] = [[start, end]] for objects[i].
    """
    groups: Dict[str, List[int]] = {}
    for i, o in enumerate(objects):
        groups.setdefault(o["category"], []).append(i)
    names = [list(groups)[k] for k in rng.permutation(len(groups))]

    def phrase(name: str) -> List[Tuple[str, Optional[str]]]:
        """Pieces (text, category-or-None) of a noun phrase; the tagged piece is the span."""
        members = groups[name]
        if len(members) > 1:
            colour, kind = name.split(" ")
            return [(_NUMBER_WORDS[len(members)] + " ", None), (f"{colour} {_plural(kind)}", name)]
        rel_size = math.sqrt(objects[members[0]]["area"]) / side
        size_word = ""
        if rng.random() < 0.4:
            size_word = "small " if rel_size < 0.19 else "large " if rel_size > 0.3 else ""
        lead = size_word or name
        return [(f"{_article(lead)} {size_word}", None), (name, name)]

    def listing(items: List[str]) -> List[Tuple[str, Optional[str]]]:
        pieces: List[Tuple[str, Optional[str]]] = []
        for k, name in enumerate(items):
            if k > 0:
                pieces.append((" and " if k == len(items) - 1 else ", ", None))
            pieces += phrase(name)
        return pieces

    pieces: List[Tuple[str, Optional[str]]] = [(_PREFIXES[rng.integers(len(_PREFIXES))], None)]
    singles = [n for n in names if len(groups[n]) == 1]
    if len(singles) >= 2 and rng.random() < 0.5:
        a, b = singles[:2]
        pieces += phrase(a) + [(f" {_relation(objects, groups[a][0], groups[b][0], side)} ", None)]
        pieces += phrase(b)
        rest = [n for n in names if n not in (a, b)]
        if rest:
            pieces += [(", and ", None)] + listing(rest)
    else:
        pieces += listing(names)

    caption, spans, pos = "", {}, 0
    for text, name in pieces:
        if name is not None:
            spans[name] = [pos, pos + len(text)]
        caption += text
        pos += len(text)
    return caption, [[list(spans[o["category"]])] for o in objects]


def _relation(objects: Sequence[dict], a: int, b: int, side: int) -> str:
    """Spatial relation of object a w.r.t. object b, from their box centres."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = objects[a]["bbox"], objects[b]["bbox"]
    dx, dy = (ax0 + ax1 - bx0 - bx1) / 2, (ay0 + ay1 - by0 - by1) / 2
    if max(abs(dx), abs(dy)) < 0.1 * side:
        return "next to"
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


# ----------------------------------------------------------------------------- writing
def _split_classes(split: str) -> Tuple[str, ...]:
    return NOVEL_CLASSES if split in ("val_novel", "train_novel") else SEEN_CLASSES


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown shapes split {split!r}; expected one of {SPLITS}.")


def iter_split(
    split: str, num_images: int, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0
) -> Iterator[Tuple[np.ndarray, List[dict], str, List[List[List[int]]]]]:
    """Yield ``(image_rgb, objects, caption, tokens_positive)`` for each image of a split."""
    _check_split(split)
    classes = _split_classes(split)
    for i in range(num_images):
        rng = np.random.default_rng([seed, SPLITS.index(split), i])
        image, objects = render_image(rng, image_size, classes)
        caption, tokens_positive = make_caption(rng, objects, image_size)
        yield image, objects, caption, tokens_positive


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO RLE ({"size": [h, w], "counts": str}) of a boolean mask, as json can store it."""
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _write_split(out_dir: str, split: str, num_images: int, image_size: int, seed: int) -> dict:
    """Write PNGs into ``out_dir`` and return the COCO json dict."""
    images, annotations = [], []
    for i, (image, objects, caption, positives) in enumerate(
        iter_split(split, num_images, image_size, seed)
    ):
        file_name = f"{i:06d}.png"
        if not cv2.imwrite(os.path.join(out_dir, file_name), image[:, :, ::-1]):
            raise OSError(f"cv2 could not write {os.path.join(out_dir, file_name)}.")
        images.append(
            {
                "id": i + 1,
                "file_name": file_name,
                "height": image_size,
                "width": image_size,
                "caption": caption,
            }
        )
        for o, tokens in zip(objects, positives):
            x0, y0, x1, y1 = o["bbox"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": ALL_CLASSES.index(o["category"]) + 1,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": float(o["area"]),
                    "iscrowd": 0,
                    "tokens_positive": tokens,
                    "segmentation": mask_to_rle(o["mask"]),
                }
            )
    categories = [
        {
            "id": k + 1,
            "name": name,
            "supercategory": name.split(" ")[1],
            "novel": name in NOVEL_CLASSES,
        }
        for k, name in enumerate(ALL_CLASSES)
    ]
    info = {
        "description": f"glip_d2 grounded shapes, split {split}",
        "generator_version": SHAPES_GENERATOR_VERSION,
        "seed": seed,
    }
    return {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


@contextlib.contextmanager
def _locked(path: str):
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_marker(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def generate_split(
    root: str,
    split: str,
    num_images: Optional[int] = None,
    image_size: Optional[int] = None,
    seed: int = 0,
) -> Tuple[str, str]:
    """Generate a split under ``<root>/shapes/`` unless an identical one is already there.

    Writing goes to a temp dir that is renamed into place; a marker holding the parameters
    and :data:`SHAPES_GENERATOR_VERSION` is written last, so an interrupted run is redone and
    changed parameters regenerate the split. A file lock serialises concurrent callers.

    Args:
        root: datasets root (usually ``$DETECTRON2_DATASETS``).
        split: one of :data:`SPLITS`.
        num_images: None = :func:`shapes_split_sizes`\\ ()[split].
        image_size: None = :func:`shapes_image_size`\\ ().
        seed: base seed; the split name is mixed in, so splits never share images.

    Returns:
        (json_file, image_root).
    """
    json_file, image_root = shapes_paths(root, split)
    num_images = shapes_split_sizes()[split] if num_images is None else int(num_images)
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    params = {
        "version": SHAPES_GENERATOR_VERSION,
        "split": split,
        "num_images": num_images,
        "image_size": shapes_image_size(image_size),
        "seed": int(seed),
    }
    marker = os.path.join(os.path.dirname(json_file), f"{split}.complete")
    if _read_marker(marker) == params and os.path.isdir(image_root):
        return json_file, image_root

    base = os.path.dirname(image_root)
    os.makedirs(os.path.dirname(json_file), exist_ok=True)
    with _locked(os.path.join(base, f".{split}.lock")):
        if _read_marker(marker) == params and os.path.isdir(image_root):
            return json_file, image_root  # another process finished it while we waited
        logger.info("Generating shapes split %r (%d images) under %s ...", split, num_images, base)
        with contextlib.suppress(FileNotFoundError):
            os.remove(marker)
        tmp = tempfile.mkdtemp(prefix=f".{split}-", dir=base)
        try:
            os.makedirs(os.path.join(tmp, "images"))
            coco = _write_split(
                os.path.join(tmp, "images"), split, num_images, params["image_size"], params["seed"]
            )
            with open(os.path.join(tmp, "ann.json"), "w") as f:
                json.dump(coco, f)
            if os.path.exists(image_root):
                shutil.rmtree(image_root)
            os.rename(os.path.join(tmp, "images"), image_root)
            os.replace(os.path.join(tmp, "ann.json"), json_file)
            with open(os.path.join(tmp, "marker"), "w") as f:
                json.dump(params, f, sort_keys=True)
            os.replace(os.path.join(tmp, "marker"), marker)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return json_file, image_root
