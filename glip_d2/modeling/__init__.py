"""GLIP components; importing registers them with Detectron2's registries."""
from . import backbone  # noqa: F401  (registers Swin backbones)
from .fusion import FUSION_TOWER_REGISTRY, VLDyHeadTower, build_fusion_tower
from .heads import GLIPATSSHead, RegionWordScorer
from .language import LANGUAGE_BACKBONE_REGISTRY, build_language_backbone
from .meta_arch import GLIP, LanguageAwareRCNN
from .proposal_generator import GLIPATSSProposalGenerator
from .roi_heads import LanguageAwareCascadeROIHeads, LanguageAwareStandardROIHeads, RegionTextInputs
