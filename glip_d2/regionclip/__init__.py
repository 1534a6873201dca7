"""RegionCLIP region-text pretraining: concept pool, CLIP teacher, region-concept losses, the
student meta-architecture, and initialising a language-aware R-CNN from the student."""

from .concepts import build_concept_pool, extract_concepts, read_concept_file, write_concept_file
from .losses import (
    image_text_contrastive_loss,
    pseudo_region_labels,
    region_concept_contrastive_loss,
    region_concept_distillation_loss,
)
from .pretrainer import RegionCLIPPretrainer
from .teacher import CLIPRegionTeacher

__all__ = [
    "CLIPRegionTeacher",
    "RegionCLIPPretrainer",
    "STUDENT_TO_DETECTOR",
    "build_concept_pool",
    "extract_concepts",
    "image_text_contrastive_loss",
    "init_detector_from_regionclip",
    "pseudo_region_labels",
    "read_concept_file",
    "region_concept_contrastive_loss",
    "region_concept_distillation_loss",
    "regionclip_to_detector_state_dict",
    "write_concept_file",
]

# Imported on first use: `python -m glip_d2.regionclip.convert` imports this package first, and
# a package that had already imported `convert` made runpy warn that the module "may result in
# unpredictable behaviour" on every run.
_FROM_CONVERT = (
    "STUDENT_TO_DETECTOR",
    "init_detector_from_regionclip",
    "regionclip_to_detector_state_dict",
)


def __getattr__(name):
    if name in _FROM_CONVERT:
        from . import convert

        return getattr(convert, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
