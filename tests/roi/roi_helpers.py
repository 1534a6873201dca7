"""Tiny two-stage configs and inputs shared by the tests under tests/roi."""

import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances, PolygonMasks

from glip_d2 import add_glip_config
from glip_d2.data.shapes import COLORS
from glip_d2.config import add_two_stage_config
from glip_d2.text import create_positive_map, tokenize

CAPTION = "red circle. blue square. green triangle"
# Character spans of the three names in CAPTION.
SPANS = [(0, 10), (12, 23), (25, 39)]


def two_stage_cfg(cls_loss: str = "focal", cascade: bool = False, fusion: bool = False):
    """The shapes demo config shrunk to train a step in well under a second on CPU."""
    cfg = get_cfg()
    add_glip_config(cfg)
    add_two_stage_config(cfg)
    cfg.merge_from_file("configs/two_stage/demo_faster_rcnn_shapes.yaml")
    tiny_text(cfg)
    cfg.MODEL.SWIN.DEPTHS = [1, 1, 1, 1]
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.MODEL.LANGUAGE_ROI_HEADS.CLS_LOSS = cls_loss
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # untrained models score below 0.05
    if cascade:
        cfg.MODEL.ROI_HEADS.NAME = "LanguageAwareCascadeROIHeads"
    if fusion:
        cfg.MODEL.LANGUAGE_ROI_HEADS.DEEP_FUSION = True
        cfg.MODEL.LANGUAGE_ROI_HEADS.FUSION_IN_FEATURES = ["p3", "p4", "p5"]
        cfg.MODEL.DYHEAD.CHANNELS = cfg.MODEL.FPN.OUT_CHANNELS
        cfg.MODEL.DYHEAD.NUM_CONVS = 1
        cfg.MODEL.DYHEAD.USE_DFCONV = False
        cfg.MODEL.DYHEAD.FUSE_CONFIG.EMBED_DIM = 64
        cfg.MODEL.DYHEAD.FUSE_CONFIG.NUM_HEADS = 2
        cfg.MODEL.DYHEAD.FUSE_CONFIG.DROPOUT = 0.0
    cfg.MODEL.GLIP.VOCABULARY = ["red circle", "blue square", "green triangle"]
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    return cfg


def tiny_text(cfg):
    """A one-layer, randomly initialised, frozen MiniLM-architecture text encoder."""
    lb = cfg.MODEL.LANGUAGE_BACKBONE
    lb.MODEL_TYPE = "minilm"
    lb.LANG_DIM = 384
    lb.LOAD_PRETRAINED = False
    lb.NUM_HIDDEN_LAYERS = 1
    lb.FREEZE = True  # its 30522-row embedding table dominates the step time
    lb.PAD_MAX = False
    return cfg


def make_input(model, caption, boxes, spans, size=(160, 192), seed=0, masks=False):
    """One training input: a dark random image (BGR) whose boxes are filled with the colour
    their name starts with ("red circle" -> red), each box named by one span of the caption."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 60, (3, *size), generator=g, dtype=torch.uint8)
    for (x0, y0, x1, y1), (start, end) in zip(boxes, spans):
        rgb = COLORS[caption[start:end].split()[0]]
        for c in range(3):
            image[c, int(y0) : int(y1), int(x0) : int(x1)] = rgb[2 - c]
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.arange(len(boxes), dtype=torch.long)
    tok = tokenize(model.tokenizer, [caption], max_length=model.max_query_len, pad_to_max=False)
    inst.gt_positive_map = (
        create_positive_map(tok, [[s] for s in spans], max_len=model.max_query_len)
        if spans
        else torch.zeros(0, model.max_query_len, dtype=torch.bool)
    )
    if masks:
        inst.gt_masks = PolygonMasks(
            [[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes]
        )
    return {
        "image": image,
        "height": size[0],
        "width": size[1],
        "caption": caption,
        "instances": inst,
    }


def batch(model, masks=False):
    """Two images, two named boxes each."""
    return [
        make_input(
            model, CAPTION, [[10, 20, 70, 90], [100, 30, 170, 120]], SPANS[:2], seed=0, masks=masks
        ),
        make_input(
            model,
            CAPTION,
            [[40, 40, 120, 150], [130, 100, 180, 150]],
            [SPANS[2], SPANS[0]],
            seed=1,
            masks=masks,
        ),
    ]


def add_proposals(inputs, num: int = 48, seed: int = 0):
    """Give each input fixed "proposals": jittered copies of its GT boxes plus random boxes (for
    MODEL.LOAD_PROPOSALS, so the ROI heads see the same regions at every step)."""
    g = torch.Generator().manual_seed(seed)
    for x in inputs:
        h, w = x["image"].shape[-2:]
        gt = x["instances"].gt_boxes.tensor
        jitter = gt.repeat(4, 1) + torch.randn(len(gt) * 4, 4, generator=g) * 6
        xy = torch.rand(num, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 16 + torch.rand(num, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        boxes = torch.cat([jitter, torch.cat([xy, xy + wh], 1)])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        p = Instances((h, w))
        p.proposal_boxes = Boxes(boxes)
        p.objectness_logits = torch.zeros(len(boxes))
        x["proposals"] = p
    return inputs
