"""Language-aware ROI heads: Detectron2's two-stage heads classifying regions against text."""

from .box_predictor import BACKGROUND_INDEX, LanguageAwareBoxPredictor
from .roi_heads import LanguageAwareCascadeROIHeads, LanguageAwareStandardROIHeads
from .text_inputs import EncodedPrompt, RegionTextInputs

__all__ = [
    "BACKGROUND_INDEX",
    "EncodedPrompt",
    "LanguageAwareBoxPredictor",
    "LanguageAwareCascadeROIHeads",
    "LanguageAwareStandardROIHeads",
    "RegionTextInputs",
]
