#!/usr/bin/env python
"""Draw the first images of a shapes dataset, boxes labelled by their phrase, into one PNG.

    python tools/visualize_shapes.py --split shapes_train_grounding --out shapes.png

The dataset is generated under $DETECTRON2_DATASETS/shapes/ if it is not there yet. With a
grounding split the caption is printed under each image.
"""

import argparse
import textwrap

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from glip_d2.data import builtin  # noqa: F401  (registers the shapes_* datasets)
from glip_d2.data.visualize import draw_dataset_dict


def _positive(kind):
    """argparse type: a number of ``kind`` above 0 (0 stopped the drawing with a traceback, a
    negative --num silently left images out)."""

    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
        return value

    parse.__name__ = f"positive_{kind.__name__}"
    return parse


def _caption_strip(caption: str, width: int, lines: int = 3) -> np.ndarray:
    """White (h, width, 3) RGB strip with the wrapped caption."""
    strip = np.full((14 * lines + 6, width, 3), 255, np.uint8)
    chars = max(10, width // 7)
    for k, line in enumerate(textwrap.wrap(caption, chars)[:lines]):
        cv2.putText(
            strip, line, (4, 16 + 14 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA
        )
    return strip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="shapes_train_grounding", help="registered dataset name")
    parser.add_argument("--out", default="shapes.png", help="output PNG path")
    parser.add_argument("--num", type=_positive(int), default=8, help="number of images to draw")
    parser.add_argument("--cols", type=_positive(int), default=4, help="images per row")
    parser.add_argument("--scale", type=_positive(float), default=2.0, help="drawing scale per image")
    parser.add_argument(
        "--quantize", type=int, default=0, help="reduce to this many colours (small files); 0=off"
    )
    args = parser.parse_args()

    dicts = DatasetCatalog.get(args.split)[: args.num]
    if not dicts:
        parser.error(f"dataset {args.split!r} has no images to draw")
    metadata = MetadataCatalog.get(args.split)
    tiles = []
    for d in dicts:
        tile = draw_dataset_dict(d, metadata, scale=args.scale)
        if "caption" in d:
            tile = np.concatenate([tile, _caption_strip(d["caption"], tile.shape[1])], axis=0)
        tiles.append(tile)
        print(f"{d['file_name']}: {d.get('caption', '')}")
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    tiles += [np.full((h, w, 3), 255, np.uint8)] * (-len(tiles) % args.cols)
    tiles = [
        cv2.copyMakeBorder(
            t, 0, h - t.shape[0], 0, w - t.shape[1], cv2.BORDER_CONSTANT, value=(255, 255, 255)
        )
        for t in tiles
    ]
    rows = [
        np.concatenate(tiles[i : i + args.cols], axis=1) for i in range(0, len(tiles), args.cols)
    ]
    grid = np.concatenate(rows, axis=0)
    if args.quantize:
        Image.fromarray(grid).quantize(args.quantize, dither=Image.Dither.NONE).save(args.out)
    elif not cv2.imwrite(args.out, grid[:, :, ::-1]):
        raise OSError(f"Could not write {args.out}.")
    print(f"Wrote {args.out} ({grid.shape[1]}x{grid.shape[0]}).")


if __name__ == "__main__":
    main()
