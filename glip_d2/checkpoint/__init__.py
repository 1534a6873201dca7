from .checkpointer import GLIPCheckpointer, check_variant
from .official import convert_official_state_dict, is_official_glip_state_dict
