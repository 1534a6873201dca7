"""Initialising a language-aware R-CNN from a RegionCLIP-pretrained student.

    python -m glip_d2.regionclip.convert \\
        --detector-config configs/two_stage/faster_rcnn_R_50_FPN_glip.yaml \\
        --student output/regionclip_pretrain_R_50_FPN/model_final.pth \\
        --output regionclip_init.pth MODEL.LANGUAGE_ROI_HEADS.EMBED_DIM 512 [KEY VALUE ...]

writes the mapped weights as a Detectron2 checkpoint ({"model": ...}) for the detector's
MODEL.WEIGHTS, and prints what was loaded, skipped for shape and left unmapped. The student's
weights are chosen as ``train_net.py --eval-only`` chooses them: its "ema" entry (a pretraining
run with SOLVER.EMA_DECAY > 0 saves one) when the detector config's TEST.USE_EMA is on (the
default; pass ``TEST.USE_EMA False`` for the raw weights), else its "model" entry.

The student's projection is copied only into a detector whose MODEL.LANGUAGE_ROI_HEADS.EMBED_DIM
is the CLIP teacher's projection_dim (512 for ViT-B/32; the shipped detector configs say 256):
hence the override above, which the config that fine-tunes the detector must give too. Without
it the projection is skipped for its shape, and the command says which value to pass.
"""

import argparse
import logging
import sys
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

__all__ = [
    "STUDENT_TO_DETECTOR",
    "regionclip_to_detector_state_dict",
    "init_detector_from_regionclip",
    "student_weights",
    "projection_hint",
]

logger = logging.getLogger(__name__)

# (student prefix, detector prefix); "{stage}" expands to each cascade stage of the detector.
STUDENT_TO_DETECTOR: List[Tuple[str, str]] = [
    ("backbone.", "backbone."),
    ("proposal_generator.", "proposal_generator."),
    ("box_head.", "roi_heads.box_head."),
    ("box_head.", "roi_heads.box_head.{stage}."),
    ("region_proj.", "roi_heads.box_predictor.region_proj."),
    ("region_proj.", "roi_heads.box_predictor.{stage}.region_proj."),
]
# Student keys that have no detector counterpart on purpose: the CLIP teacher, and the RPN's
# frozen backbone copy (the detector takes the pretrained `backbone.`).
_IGNORED = ("teacher.", "rpn_backbone.")


def regionclip_to_detector_state_dict(
    student_sd: Dict[str, torch.Tensor], detector: nn.Module
) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]]]:
    """Map a `RegionCLIPPretrainer` state dict onto `detector`'s keys.

    Args:
        student_sd: the student's state dict (the teacher's keys are ignored).
        detector: a `LanguageAwareRCNN` (standard or cascade heads).

    Returns:
        (state dict for `detector.load_state_dict(..., strict=False)`, report) where report has
        "loaded" (detector keys), "shape_mismatch" (detector keys skipped, e.g. the projection
        when LANGUAGE_ROI_HEADS.EMBED_DIM differs from the teacher's projection_dim) and
        "unmapped" (student keys with no detector key).
    """
    target = detector.state_dict()
    stages = sorted(
        {
            k.split(".")[2]
            for k in target
            if k.startswith("roi_heads.box_head.") and k.split(".")[2].isdigit()
        }
    )
    out, report = {}, {"loaded": [], "shape_mismatch": [], "unmapped": []}
    for key, value in student_sd.items():
        if key.startswith(_IGNORED):
            continue
        candidates = []
        for src, dst in STUDENT_TO_DETECTOR:
            if key.startswith(src):
                rest = key[len(src) :]
                for d in ([dst.format(stage=s) for s in stages] if "{stage}" in dst else [dst]):
                    candidates.append(d + rest)
        hits = [c for c in candidates if c in target]
        if not hits:
            report["unmapped"].append(key)
        for c in hits:
            if target[c].shape != value.shape:
                report["shape_mismatch"].append(c)
            else:
                out[c] = value
                report["loaded"].append(c)
    return out, report


def projection_hint(
    student_sd: Dict[str, torch.Tensor], detector: nn.Module, report: Dict[str, List[str]]
) -> Optional[str]:
    """What to pass when the student's projection was skipped for its shape (None: it was
    not). The detector's projection has MODEL.LANGUAGE_ROI_HEADS.EMBED_DIM outputs (256 in the
    shipped configs), the student's the CLIP teacher's projection_dim (512 for ViT-B/32), so
    by default the projection the pretraining trained is silently left out."""
    skipped = [k for k in report["shape_mismatch"] if k.endswith("region_proj.weight")]
    weight = student_sd.get("region_proj.weight")
    if not skipped or weight is None:
        return None
    width = detector.state_dict()[skipped[0]].shape[0]
    return (
        f"The student's projection has {weight.shape[0]} outputs (its CLIP teacher's "
        f"projection_dim), the detector's {width} (MODEL.LANGUAGE_ROI_HEADS.EMBED_DIM), so it "
        f"was not copied. To copy it, pass MODEL.LANGUAGE_ROI_HEADS.EMBED_DIM {weight.shape[0]} "
        "here and in the config that fine-tunes the detector."
    )


def init_detector_from_regionclip(
    detector: nn.Module, student_sd: Dict[str, torch.Tensor]
) -> Dict[str, List[str]]:
    """Load the mapped student weights into `detector` in place; returns the report."""
    sd, report = regionclip_to_detector_state_dict(student_sd, detector)
    detector.load_state_dict(sd, strict=False)
    logger.info(
        f"RegionCLIP init: {len(report['loaded'])} tensors loaded, "
        f"{len(report['shape_mismatch'])} skipped for shape, {len(report['unmapped'])} unmapped."
    )
    hint = projection_hint(student_sd, detector, report)
    if hint:
        logger.warning(hint)
    return report


def student_weights(checkpoint: Dict, use_ema: bool) -> Tuple[Dict[str, torch.Tensor], str]:
    """The student state dict of a RegionCLIP pretraining checkpoint and which entry it is.

    The rule of ``train_net.py --eval-only`` (:func:`glip_d2.engine.load_ema_for_eval`): the
    "ema" entry when `use_ema` (TEST.USE_EMA) and the checkpoint has one, else "model"; a bare
    state dict is taken as it is. A DDP wrapper's "module." prefix (on every key) is removed.

    Returns:
        (state dict, "ema" or "model").
    """
    from ..engine.ema import _own_keys  # EMA weights saved with a DDP prefix by old versions

    if "model" not in checkpoint:
        return _own_keys(checkpoint), "model"
    if use_ema and checkpoint.get("ema"):
        return _own_keys(checkpoint["ema"]), "ema"
    if checkpoint.get("ema"):
        logger.info("TEST.USE_EMA is off: the student's raw weights, not its EMA, are converted.")
    return _own_keys(checkpoint["model"]), "model"


def main(argv=None) -> Dict[str, List[str]]:
    """Command-line entry point (see the module docstring); returns the mapping report."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from ..checkpoint.checkpointer import atomic_torch_save, read_checkpoint
    from ..config import add_glip_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector-config", required=True, help="the language-aware R-CNN config")
    p.add_argument("--student", required=True, help="RegionCLIPPretrainer checkpoint (.pth)")
    p.add_argument("--output", required=True, help="where to write the detector checkpoint")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = p.parse_args(argv)
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(args.detector_config)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""] + list(args.opts))
    detector = build_model(cfg)
    # weights_only / the restricted unpickler; an unreadable file is an error naming it
    checkpoint = read_checkpoint(args.student)
    student_sd, used = student_weights(checkpoint, cfg.TEST.USE_EMA)
    sd, report = regionclip_to_detector_state_dict(student_sd, detector)
    if not sd:
        raise SystemExit(
            f"No tensor of {args.student} maps onto the detector of {args.detector_config}; is it "
            "a RegionCLIPPretrainer checkpoint of the same backbone?"
        )
    # a failed write (a full disk) leaves no partial file to be loaded later as MODEL.WEIGHTS
    atomic_torch_save({"model": sd, "__author__": "glip_d2.regionclip.convert"}, args.output)
    print(
        f"{args.output} (the student's {'EMA' if used == 'ema' else 'raw'} weights): "
        f"{len(report['loaded'])} tensors loaded, "
        f"{len(report['shape_mismatch'])} skipped for shape {report['shape_mismatch'][:5]}, "
        f"{len(report['unmapped'])} unmapped {report['unmapped'][:5]}"
    )
    hint = projection_hint(student_sd, detector, report)
    if hint:
        print(hint)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
