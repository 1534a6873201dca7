from .bert_layer import BertEncoderLayer
from .bi_attention import BiMultiHeadAttention, VLFuse
from .deform import ModulatedDeformConv3x3, offsets_for_output
from .dyconv import DyConv, DyReLU
from .tower import FUSION_TOWER_REGISTRY, VLDyHeadTower, build_fusion_tower, check_pyramid_levels
