from .checkpointer import (
    GLIPCheckpointer,
    atomic_torch_save,
    check_coverage,
    check_prompt_tuning,
    check_shapes,
    check_variant,
    describe_variant,
    read_checkpoint,
    read_pkl_checkpoint,
    to_glip_d2_state_dict,
)
from .official import convert_official_state_dict, is_official_glip_state_dict
from ..safe_pickle import load_pickle_weights
