"""Draw grounding boxes labelled by their phrase with Detectron2's Visualizer."""

import zlib
from typing import List, Optional, Sequence

import numpy as np
import torch
from detectron2.data.detection_utils import convert_image_to_rgb, read_image
from detectron2.structures import BoxMode
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer


def draw_grounding(
    image_rgb: np.ndarray,
    boxes,
    labels: Sequence[str],
    scores: Optional[Sequence[float]] = None,
    scale: float = 1.0,
) -> np.ndarray:
    """Draw boxes with text labels.

    Args:
        image_rgb: (H, W, 3) RGB image in [0, 255].
        boxes: (N, 4) absolute XYXY boxes (array, list, tensor or ``Boxes``).
        labels: N strings, e.g. the phrase naming each box.
        scores: optional N scores, appended to the labels as percentages.
        scale: output size relative to the input (use >1 for small images).

    Returns:
        uint8 (H * scale, W * scale, 3) RGB drawing.
    """
    if hasattr(boxes, "tensor"):
        boxes = boxes.tensor
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).cpu().numpy()
    if len(labels) != len(boxes):
        raise ValueError(f"Got {len(boxes)} boxes but {len(labels)} labels.")
    labels = list(labels)
    palette = colormap(rgb=True, maximum=1)
    # one colour per name, the same in every image and video frame (crc32: stable across runs)
    colors = [palette[zlib.crc32(str(lab).encode("utf-8")) % len(palette)] for lab in labels]
    if scores is not None:
        if len(scores) != len(boxes):
            raise ValueError(f"Got {len(boxes)} boxes but {len(scores)} scores.")
        labels = [f"{lab} {100 * float(s):.0f}%" for lab, s in zip(labels, scores)]
    vis = Visualizer(np.asarray(image_rgb), metadata=None, scale=scale)
    if len(boxes):
        vis.overlay_instances(boxes=boxes, labels=labels, assigned_colors=colors)
    return vis.get_output().get_image()


def _phrases(caption: Optional[str], spans_per_box, class_names: List[str]) -> List[str]:
    """Caption text of each box's spans when there is a caption, else its class name."""
    if caption is None or spans_per_box is None:
        return class_names
    return [
        " ".join(caption[s:e] for s, e in spans) or name
        for spans, name in zip(spans_per_box, class_names)
    ]


def draw_dataset_dict(
    d: dict, metadata, image_format: str = "BGR", scale: float = 1.0
) -> np.ndarray:
    """Draw a dataset dict or a mapper output, each box labelled by its phrase.

    Args:
        d: either a Detectron2 dataset dict ("file_name", "annotations") or a mapper output
            ("image" (C, H, W) tensor, "instances" with gt_boxes / gt_classes). The label of a
            box is its caption text (when ``d`` has "caption" and the annotations / instances
            have "tokens_positive", or for a grounding mapper output, whose gt_classes index
            its "phrase_spans") or else its class name from ``metadata.thing_classes``.
        metadata: Detectron2 Metadata with ``thing_classes``.
        image_format: channel order of ``d["image"]`` (mapper output); files are read as RGB.
        scale: output size relative to the image.

    Returns:
        uint8 RGB drawing.
    """
    names = metadata.get("thing_classes", None)
    if names is None:
        raise ValueError("draw_dataset_dict needs metadata with 'thing_classes'.")
    caption = d.get("caption")
    if "image" in d:
        image = d["image"]
        image = (
            image.permute(1, 2, 0) if isinstance(image, torch.Tensor) else image.transpose(1, 2, 0)
        )
        image = convert_image_to_rgb(image, image_format)
    else:
        image = read_image(d["file_name"], format="RGB")
    if "instances" in d:
        inst = d["instances"]
        boxes = inst.gt_boxes.tensor
        if caption is not None and "phrase_spans" in d:
            # GroundingDatasetMapper: gt_classes are phrase indices, not categories
            spans = [d["phrase_spans"][int(c)] for c in inst.gt_classes]
            classes = [f"phrase {int(c)}" for c in inst.gt_classes]
        else:
            classes = [names[int(c)] for c in inst.gt_classes]
            spans = inst.tokens_positive if inst.has("tokens_positive") else None
    else:
        annos = [a for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos]
        classes = [names[a["category_id"]] for a in annos]
        spans = (
            [a["tokens_positive"] for a in annos]
            if all("tokens_positive" in a for a in annos)
            else None
        )
    return draw_grounding(image, boxes, _phrases(caption, spans, classes), scale=scale)
