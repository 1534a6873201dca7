from .checkpointer import (
    GLIPCheckpointer,
    check_variant,
    describe_variant,
    read_checkpoint,
    to_glip_d2_state_dict,
)
from .official import convert_official_state_dict, is_official_glip_state_dict
