"""Initialising a language-aware R-CNN from a RegionCLIP-pretrained student."""

import logging
from typing import Dict, List, Tuple

import torch
from torch import nn

__all__ = [
    "STUDENT_TO_DETECTOR",
    "regionclip_to_detector_state_dict",
    "init_detector_from_regionclip",
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
# Student keys that have no detector counterpart on purpose.
_IGNORED = ("teacher.",)


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
    return report
