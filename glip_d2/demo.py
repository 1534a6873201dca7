"""Command-line demo: detect a vocabulary or ground a caption in images, draw and save results.

    python -m glip_d2.demo --config-file configs/demo_glip_tiny_shapes.yaml \\
        --input datasets/shapes/val/ --output output/demo_vis \\
        --opts MODEL.WEIGHTS output/demo_shapes/model_final.pth

    --vocabulary coco|lvis            builtin names (default: the config's vocabulary)
    --custom-vocabulary "a,b,c"       your own names
    --descriptions FILE               class descriptions (JSON/YAML): a list of
                                      {prefix, name, suffix} is the vocabulary; a mapping
                                      name -> {prefix, suffix} describes --custom-vocabulary
    --caption "a man riding a bike"   grounding; --phrases "a man,a bike" (default: noun phrases)

``--output DIR`` receives one PNG per image (boxes labelled with name/phrase and score) and one
``detections.json`` in COCO results format: "image_id" (the image's 1-based position among the
inputs), "category_id" (COCO / LVIS ids for those vocabularies, else the 1-based label index),
"bbox" (XYWH), "score", plus "category_name", "file_name" and, with --caption, "phrase".

Unusual images (grayscale, alpha, 16-bit, tiny) are converted with a note on stderr; a missing or
broken image, or one the model cannot take (e.g. 3x10000 pixels, too elongated to resize), is
reported on stderr and skipped, and ``detections.json`` holds the images that succeeded (it is
also written when the run is interrupted). Exit status: 0 when at least one image was processed,
1 when none could be, 2 for a setup error (config, checkpoint, vocabulary, caption, an
``--output`` that is not a folder (with ``--video-input``: a folder or a .mp4 / .avi / .mkv file)
or that would overwrite an input).
"""

import argparse
import glob
import logging
import os
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .atomic_file import atomic_write_json

__all__ = ["ImageReadError", "collect_inputs", "get_parser", "main", "read_image_file", "setup_cfg"]

logger = logging.getLogger("glip_d2.demo")

IMAGE_EXTENSIONS = tuple(".jpg .jpeg .png .bmp .tif .tiff .webp .gif .ppm .pgm".split())
# Drawings of small images are scaled up to about this short side, so labels stay legible.
_DRAW_SHORT_SIDE = 480
_MAX_DRAW_SCALE = 8.0
# What one image or video frame can raise once the setup and the query were checked (its size,
# memory, a failed write): reported for that input, not a setup error
INPUT_ERRORS = (ValueError, RuntimeError, OSError, MemoryError)


class ImageReadError(ValueError):
    """An input file that is missing, unreadable or not an image."""


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m glip_d2.demo",
        description="GLIP open-vocabulary detection / phrase grounding on images.",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="glip_d2 config file")
    parser.add_argument(
        "--input",
        nargs="+",
        help="image files, glob patterns (quoted) or directories (their images, not recursive)",
    )
    parser.add_argument(
        "--video-input",
        metavar="FILE",
        help="a video file instead of --input: every frame is detected; with --output (a folder, "
        "or a .mp4 / .avi / .mkv file) the annotated frames are written as a video",
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="folder for one PNG per image and detections.json (COCO results format); without it "
        "only a summary is printed",
    )
    parser.add_argument(
        "--vocabulary",
        choices=["coco", "lvis", "custom"],
        help="names to detect: builtin coco / lvis, or custom (see --custom-vocabulary); "
        "default: the config's vocabulary (MODEL.GLIP.VOCABULARY or DATASETS.TEST[0])",
    )
    parser.add_argument(
        "--custom-vocabulary", metavar="NAMES", help='comma-separated names, e.g. "cat,dog"'
    )
    parser.add_argument(
        "--descriptions",
        metavar="FILE",
        help="JSON/YAML file of class descriptions: a list of {prefix, name, suffix} (or names) "
        "is the vocabulary; a mapping name -> {prefix, suffix} describes the names of "
        "--custom-vocabulary. Only the names' tokens score a class; the rest is context",
    )
    parser.add_argument(
        "--caption", help="ground the phrases of this caption instead of a vocabulary"
    )
    parser.add_argument(
        "--phrases",
        metavar="PHRASES",
        help="comma-separated phrases of --caption to ground (default: its noun phrases)",
    )
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.3, help="minimum score (default 0.3)"
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. --opts MODEL.WEIGHTS model.pth",
    )
    return parser


def setup_cfg(args):
    """glip_d2 config from ``--config-file`` and ``--opts``; CUDA falls back to CPU if absent."""
    from detectron2.config import get_cfg

    from .config import add_glip_config

    from .model_zoo import resolve_config_file

    config_file = resolve_config_file(args.config_file)  # a file, or a shipped config's name
    if len(args.opts) % 2:
        raise ValueError(
            f"--opts takes KEY VALUE pairs, but {args.opts[-1]!r} has no value; give one for "
            "every key, e.g. --opts MODEL.WEIGHTS model.pth"
        )
    cfg = get_cfg()
    add_glip_config(cfg)
    import yaml

    try:
        with open(config_file) as f:
            content = yaml.safe_load(f)
        if not isinstance(content, dict):  # empty, a list or a scalar: yacs would fail obscurely
            what = "an empty file" if content is None else f"a {type(content).__name__}"
            raise ValueError(
                f"invalid config file {config_file!r}: it must be a YAML mapping of config "
                f"keys (e.g. MODEL: ...), not {what}"
            )
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(args.opts)
    except yaml.YAMLError as e:  # the file (or a _BASE_ it names) is not YAML
        raise ValueError(f"invalid config file {config_file!r}: not valid YAML ({e})") from None
    except AssertionError as e:  # yacs checks its inputs with assertions
        raise ValueError(f"invalid config or --opts: {e}") from None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but CUDA is not available; using CPU."
        )
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def collect_inputs(patterns: List[str]) -> Tuple[List[str], List[str]]:
    """Expand ``--input`` into image paths.

    Returns:
        (paths in order without repeats, error messages for inputs that gave nothing).
    """
    paths, errors = [], []
    for pattern in patterns:
        if os.path.isfile(pattern):  # also a name with [ * ?, which glob would read as a pattern
            found = [pattern]
        elif os.path.isdir(pattern):
            found = sorted(
                os.path.join(pattern, f)
                for f in os.listdir(pattern)
                if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(pattern, f))
            )
            if not found:
                errors.append(
                    f"{pattern}: the directory has no image files ({', '.join(IMAGE_EXTENSIONS)})"
                )
        elif any(c in pattern for c in "*?["):  # a glob the shell did not expand
            found = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
            if not found:
                errors.append(f"{pattern}: the pattern matches no file")
        else:
            found = [pattern]  # a missing file is reported when it is read
        paths += [p for p in found if p not in paths]
    return paths, errors


def read_image_file(path: str) -> Tuple[np.ndarray, List[str]]:
    """Read an image file as (H, W, 3) uint8 RGB, EXIF orientation applied.

    Returns:
        (image, notes): notes say how an unusual image was converted (grayscale, alpha,
        16-bit, tiny).

    Raises:
        ImageReadError: for a missing, unreadable, truncated or non-image file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    from .predictor import to_rgb_uint8

    if not os.path.exists(path):
        raise ImageReadError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: not a file")
    notes = []
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            mode = img.mode
            if mode in ("1", "L", "LA") or (mode in ("P", "PA") and _palette_is_gray(img)):
                notes.append(f"grayscale image (mode {mode}): copied to 3 channels")
            elif mode.startswith("I"):
                notes.append(
                    f"high bit depth grayscale image (mode {mode}, e.g. a 16-bit PNG): scaled "
                    "to 8 bits and copied to 3 channels"
                )
            elif mode == "F":
                notes.append(
                    "floating-point grayscale image (mode F): scaled to 8 bits by its range "
                    "(0..1 -> x255, 0..255 kept, else min..max -> 0..255) and copied to 3 "
                    "channels"
                )
            if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
                notes.append(f"image with transparency (mode {mode}): alpha channel ignored")
            rgb = to_rgb_uint8(img)
    except UnidentifiedImageError:
        raise ImageReadError(
            f"{path}: not an image file (or a format Pillow cannot read)"
        ) from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path}: refused, too many pixels ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(
            f"{path}: cannot be decoded, the file is truncated or corrupt ({e})"
        ) from None
    h, w = rgb.shape[:2]
    if min(h, w) < 8:
        notes.append(
            f"tiny image ({w}x{h} pixels): it is upscaled to the test size, so detections are "
            "unlikely to mean anything"
        )
    return rgb, notes


def _palette_is_gray(img) -> bool:
    palette = img.getpalette() or []
    return all(
        palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3)
    )


def _query(args, parser) -> Dict:
    """The predictor's keyword arguments (vocabulary or caption + phrases) from the CLI."""
    descriptions = getattr(args, "descriptions", None)
    if args.caption is not None:
        if args.vocabulary or args.custom_vocabulary or descriptions:
            parser.error(
                "--caption grounds phrases; do not combine it with --vocabulary / "
                "--custom-vocabulary / --descriptions"
            )
        phrases = _split(args.phrases) if args.phrases is not None else None
        if phrases is not None and not phrases:
            parser.error("--phrases gave no phrase")
        return {"caption": args.caption, "phrases": phrases}
    if args.phrases is not None:
        parser.error("--phrases needs --caption")
    if descriptions is not None:
        return {"vocabulary": _described_vocabulary(args, parser, descriptions)}
    if args.custom_vocabulary is not None:
        if args.vocabulary not in (None, "custom"):
            parser.error("--custom-vocabulary goes with --vocabulary custom (or alone)")
        names = _split(args.custom_vocabulary)
        if not names:
            parser.error("--custom-vocabulary gave no name")
        return {"vocabulary": names}
    if args.vocabulary == "custom":
        parser.error('--vocabulary custom needs --custom-vocabulary "name1,name2,..."')
    return {"vocabulary": args.vocabulary}


def _described_vocabulary(args, parser, path: str) -> List:
    """The vocabulary of --descriptions (with --custom-vocabulary when it is a mapping)."""
    from .text import apply_descriptions, load_descriptions

    if not os.path.isfile(path):
        parser.error(f"--descriptions {path!r} is not a file")
    if args.vocabulary not in (None, "custom"):
        parser.error("--descriptions describes custom names; do not combine it with "
                     f"--vocabulary {args.vocabulary}")
    try:
        descriptions = load_descriptions(path)
        if args.custom_vocabulary is not None:
            return apply_descriptions(_split(args.custom_vocabulary), descriptions)
    except ValueError as e:
        parser.error(f"--descriptions: {e}")
    if isinstance(descriptions, dict):
        parser.error("--descriptions holds a mapping name -> description; give the names with "
                     '--custom-vocabulary "name1,name2" (or make the file a list)')
    if not descriptions:
        parser.error(f"--descriptions {path!r} holds no class")
    return descriptions


def _split(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _category_ids(query: Dict, num_labels: int, cfg) -> List[int]:
    """The "category_id" of each label in detections.json: the dataset's ids for a builtin
    vocabulary or for the config's test dataset, else 1..N."""
    if isinstance(query.get("vocabulary"), str):
        from .vocabularies import get_vocabulary

        return list(get_vocabulary(query["vocabulary"]).category_ids)
    if "caption" not in query and query.get("vocabulary") is None:
        if not len(cfg.MODEL.GLIP.VOCABULARY) and len(cfg.DATASETS.TEST):
            from detectron2.data import MetadataCatalog

            id_map = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get(
                "thing_dataset_id_to_contiguous_id"
            )
            if id_map and sorted(id_map.values()) == list(range(num_labels)):
                return [d for d, _ in sorted(id_map.items(), key=lambda kv: kv[1])]
    return list(range(1, num_labels + 1))


def _output_name(path: str, used: set) -> str:
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    name, k = stem + ".png", 1
    while name in used:
        name, k = f"{stem}_{k}.png", k + 1
    used.add(name)
    return name


def _output_names(paths: List[str]) -> Dict[str, str]:
    """The drawing's file name of each input, fixed before the run (an image that fails keeps
    its name unused), so that the files it will write can be checked up front."""
    used: set = set()
    return {path: _output_name(path, used) for path in paths}


def _file_id(path: str) -> Optional[Tuple[int, int]]:
    """(device, inode) of an existing file: equal for one file under two names (symbolic or hard
    links, ./a vs a, case on a case-insensitive disk); None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _overwritten_input(inputs: List[str], outputs: List[str]) -> Optional[Tuple[str, str]]:
    """(input, output) of the first output file that is one of the input files, else None."""
    ids = {}
    for path in inputs:
        ids.setdefault(_file_id(path), path)
    ids.pop(None, None)
    for out in outputs:
        key = _file_id(out)
        if key in ids:
            return ids[key], out
    return None


def _overwrite_error(paths: List[str], output: str, names: Dict[str, str]) -> Optional[str]:
    """Why writing the drawings and detections.json to ``output`` would destroy an input."""
    outputs = [os.path.join(output, n) for n in names.values()]
    clash = _overwritten_input(paths, outputs + [os.path.join(output, "detections.json")])
    if clash is None:
        return None
    return (
        f"--output {output!r} would overwrite the input {clash[0]!r} (with {clash[1]!r}); "
        "choose another --output folder"
    )


def _results(image_id: int, path: str, inst, labels, category_ids, query) -> List[Dict]:
    boxes = inst.pred_boxes.tensor.tolist()
    out = []
    for (x0, y0, x1, y1), score, c in zip(boxes, inst.scores.tolist(), inst.pred_classes.tolist()):
        r = {
            "image_id": image_id,
            "file_name": path,
            "category_id": int(category_ids[c]),
            "category_name": labels[c],
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": round(float(score), 5),
        }
        if "caption" in query:
            r["phrase"] = labels[c]
        out.append(r)
    return out


def _summary(path: str, inst, labels) -> str:
    top = [f"{labels[c]} {s:.2f}" for c, s in zip(inst.pred_classes.tolist(), inst.scores.tolist())]
    more = ", ..." if len(top) > 5 else ""
    return f"{path}: {len(inst)} detections" + (f" ({', '.join(top[:5])}{more})" if top else "")


def _output_folder_error(path: str) -> Optional[str]:
    """Why ``--output`` cannot be the folder of drawings and detections.json (None: it can; it is
    created if missing)."""
    if os.path.exists(path) and not os.path.isdir(path):
        return (
            f"--output {path!r} is an existing file; it must name a folder (created if missing) "
            "for the drawings and detections.json"
        )
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        return f"--output {path!r}: cannot create the folder ({e})"
    return None


def _check_query(predictor, query: Dict) -> None:
    """Raise the ValueError a bad vocabulary or caption gives, before any image is read, so that
    an error while detecting in an image is about that image."""
    if "caption" in query:
        predictor._grounding_inputs(query["caption"], query["phrases"], 1)
    else:
        predictor.set_vocabulary(query["vocabulary"])


def _build_predictor(args, report):
    """The predictor the arguments describe, or None after reporting why it cannot be built."""
    from .predictor import GLIPPredictor

    try:
        return GLIPPredictor(
            setup_cfg(args), input_format="RGB", confidence_threshold=args.confidence_threshold
        )
    except (OSError, RuntimeError, ValueError, KeyError) as e:  # config, checkpoint, variant
        report(f"error: {e}")
        return None


def main(argv: Optional[List[str]] = None) -> int:
    """Run the demo; returns 0 when at least one image was processed, else 1 (2 = setup error)."""
    from tqdm import tqdm

    from .data.visualize import draw_grounding

    parser = get_parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.confidence_threshold <= 1.0:
        parser.error("--confidence-threshold must lie in [0, 1]")
    if bool(args.input) == bool(args.video_input):
        parser.error("give either --input (images) or --video-input (a video)")
    query = _query(args, parser)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def report(msg):
        tqdm.write(msg, file=sys.stderr)

    if args.video_input:
        return _video_main(args, query, report)
    paths, errors = collect_inputs(args.input)
    for e in errors:
        report(f"error: {e}")
    if not paths:
        report("error: no input image")
        return 1
    names = _output_names(paths)
    if args.output:
        problem = _overwrite_error(paths, args.output, names) or _output_folder_error(args.output)
        if problem:
            report(f"error: {problem}")
            return 2
    predictor = _build_predictor(args, report)
    if predictor is None:
        return 2
    try:
        _check_query(predictor, query)
    except ValueError as e:  # the vocabulary / caption: wrong for every image
        report(f"error: {e}")
        return 2

    results, done, failed, category_ids = [], 0, 0, None
    try:
        for image_id, path in enumerate(
            tqdm(paths, desc="glip_d2 demo", unit="image", file=sys.stderr), 1
        ):
            try:
                rgb, notes = read_image_file(path)
            except ImageReadError as e:
                report(f"error: {e}; skipped")
                failed += 1
                continue
            try:
                out = predictor(rgb, **query)
                inst, labels = out["instances"].to("cpu"), out["labels"]
                if args.output:
                    scale = min(_MAX_DRAW_SCALE, max(1.0, _DRAW_SHORT_SIDE / min(rgb.shape[:2])))
                    drawing = draw_grounding(
                        rgb,
                        inst.pred_boxes,
                        [labels[c] for c in inst.pred_classes.tolist()],
                        inst.scores.tolist(),
                        scale=scale,
                    )
                    _save_png(drawing, os.path.join(args.output, names[path]))
            # the query was checked above, so these are about this image (its size, memory, a
            # failed write): report it and go on with the next one
            except INPUT_ERRORS as e:
                report(f"error: {path}: {e}; skipped")
                failed += 1
                continue
            for note in notes:
                report(f"note: {path}: {note}")
            if category_ids is None:
                category_ids = _category_ids(query, len(labels), predictor.cfg)
            results += _results(image_id, path, inst, labels, category_ids, query)
            report(_summary(path, inst, labels))
            done += 1
    finally:  # also after an interrupt: what succeeded is kept
        if args.output:
            atomic_write_json(os.path.join(args.output, "detections.json"), results)
            report(
                f"Wrote {done} drawings and {len(results)} detections to {args.output}"
                + (f"; {failed} of {len(paths)} images failed" if failed else "")
            )
    if not done:
        report("error: no image could be processed")
        return 1
    return 0


def _video_main(args, query: Dict, report) -> int:
    from .demo_video import run_video, video_output_error

    if args.output:  # before the model is built: a wrong --output fails at once
        problem = video_output_error(args.output, args.video_input)
        if problem:
            report(f"error: {problem}")
            return 2
    predictor = _build_predictor(args, report)
    if predictor is None:
        return 2
    try:
        return run_video(predictor, query, args.video_input, args.output or "", report)
    except ValueError as e:  # the vocabulary / caption
        report(f"error: {e}")
        return 2


def _save_png(rgb: np.ndarray, path: str) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path)


if __name__ == "__main__":
    sys.exit(main())
