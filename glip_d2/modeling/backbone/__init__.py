from .swin import SwinTransformer, build_swin_backbone
from .swin_fpn import (
    GLIPFPN,
    OFFICIAL_BACKBONE_KEY_MAP,
    build_retinanet_style_fpn,
    build_swin_fpn_retinanet_backbone,
    convert_official_backbone_state_dict,
)
