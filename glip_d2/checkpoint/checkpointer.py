"""Detectron2 checkpointer that loads official GLIP checkpoints safely and converts them."""
import logging

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .official import convert_official_state_dict, is_official_glip_state_dict

logger = logging.getLogger(__name__)


class GLIPCheckpointer(DetectionCheckpointer):
    """`MODEL.WEIGHTS` may be a glip_d2 checkpoint, a Detectron2 one, a `.safetensors` file or an
    official GLIP `.pth` (`{"model": {"module.backbone.body...": ...}}`), detected and converted
    on load. Files are read with `torch.load(weights_only=True)`: no pickled code is executed."""

    def _load_file(self, filename):
        if filename.endswith(".safetensors"):
            from safetensors.torch import load_file

            return {"model": load_file(filename), "__author__": "glip_d2", "matching_heuristics": False}
        if filename.endswith(".pkl"):
            return super()._load_file(filename)
        try:
            ckpt = torch.load(filename, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle.UnpicklingError and friends
            raise RuntimeError(
                f"Could not load {filename} with torch.load(weights_only=True) ({e}). glip_d2 never "
                "unpickles arbitrary objects: re-save the checkpoint as a plain dict of tensors, "
                "or convert it with `python -m glip_d2.checkpoint.convert`."
            ) from e
        sd = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
        if is_official_glip_state_dict(sd):
            converted, report = convert_official_state_dict(sd)
            for key, reason in report["ignored"]:
                logger.info(f"Official key ignored: {key} ({reason})")
            if report["unmapped"]:
                logger.warning("Official keys with no glip_d2 counterpart: " + ", ".join(report["unmapped"]))
            check_variant(self.model, converted)
            return {"model": converted, "__author__": "glip_official", "matching_heuristics": False}
        out = dict(ckpt) if "model" in ckpt else {"model": sd}
        out.setdefault("matching_heuristics", False)
        return out


def check_variant(model, converted):
    """Raise a clear error when a checkpoint of another GLIP variant meets this config."""
    own = model.state_dict()
    mism = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in converted.items()
            if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing_blocks = [k for k in converted if k.startswith("head.tower.blocks.") and k not in own]
    if mism or missing_blocks:
        detail = "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in mism[:5])
        if missing_blocks:
            detail += f"; checkpoint has tower keys the model lacks, e.g. {missing_blocks[0]}"
        ck_embed = converted.get("backbone.bottom_up.patch_embed.proj.weight")
        md_embed = own.get("backbone.bottom_up.patch_embed.proj.weight")
        guess = ""
        if ck_embed is not None and md_embed is not None:
            guess = (f" The checkpoint's Swin embed dim is {ck_embed.shape[0]}, the config's "
                     f"{md_embed.shape[0]} (96 = GLIP-T, 192 = GLIP-L).")
        raise ValueError(
            "The checkpoint is for another GLIP variant than the config." + guess +
            " Use the config that matches the checkpoint (configs/glip_swin_t.yaml, "
            "glip_A_swin_t.yaml, glip_swin_l.yaml). Details: " + detail
        )
