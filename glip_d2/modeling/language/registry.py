"""Registry of text encoders ("language backbones")."""
from detectron2.utils.registry import Registry

LANGUAGE_BACKBONE_REGISTRY = Registry("LANGUAGE_BACKBONE")
LANGUAGE_BACKBONE_REGISTRY.__doc__ = """
Registry for language backbones: text encoders that turn tokenized prompts into per-token features.

The registered object is called with `obj(cfg)` and must return an `nn.Module` whose
`forward(input_ids: LongTensor[B, T], attention_mask: LongTensor[B, T])` returns a dict:
  "hidden":   FloatTensor[B, T, D]  last-layer token features (fed to the fusion tower),
  "embedded": FloatTensor[B, T, D]  token features zeroed on padding (used by the head when
              the tower's fused features are not used),
  "masks":    LongTensor[B, T]      the attention mask (1 = real token).
It must also expose `language_dim: int` (D).
"""


def build_language_backbone(cfg):
    """Build the language backbone named by `cfg.MODEL.LANGUAGE_BACKBONE.NAME`."""
    return LANGUAGE_BACKBONE_REGISTRY.get(cfg.MODEL.LANGUAGE_BACKBONE.NAME)(cfg)
