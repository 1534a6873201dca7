"""Detectron2 checkpointer that reads checkpoints safely, converts official GLIP ones, and refuses
a checkpoint of another GLIP variant than the config with an error that names both."""

import logging
import os
import pickle
import re
from typing import Dict, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from .official import convert_official_state_dict, is_official_glip_state_dict

logger = logging.getLogger(__name__)

__all__ = [
    "GLIPCheckpointer",
    "check_variant",
    "describe_variant",
    "read_checkpoint",
    "to_glip_d2_state_dict",
]

# Buffers a model rebuilds itself; a checkpoint may or may not carry them.
_REBUILT_BUFFERS = ("relative_position_index", "position_ids", "num_batches_tracked")
_SWIN_BLOCK = re.compile(r"^backbone\.bottom_up\.layers\.(\d+)\.blocks\.(\d+)\.")
_TOWER_BLOCK = re.compile(r"^head\.tower\.blocks\.(\d+)\.")
_EMBED_KEY = "backbone.bottom_up.patch_embed.proj.weight"


def read_checkpoint(path: str, trust_pickle: bool = False) -> Dict:
    """Read a `.pth` / `.safetensors` checkpoint into a dict with a "model" state dict.

    `.pth` files are read with `torch.load(weights_only=True)`: tensors, containers and plain
    values only, no pickled code is run.

    Args:
        path: a local file.
        trust_pickle: read `.pth` files with `weights_only=False`, which runs any code pickled
            in the file. Only for files from a source you trust.

    Returns:
        the checkpoint dict; a bare state dict is wrapped as {"model": state_dict}.

    Raises:
        FileNotFoundError: if `path` is not a file.
        RuntimeError: if the file cannot be read (corrupt, truncated, or it pickles objects
            other than tensors and plain containers).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist (or is not a file).")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return {"model": load_file(path)}
        except Exception as e:  # safetensors raises its own SafetensorError
            raise RuntimeError(
                f"Could not read {path} as safetensors ({type(e).__name__}: {e}); the file is "
                "corrupt or truncated."
            ) from e
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        raise RuntimeError(
            f"{path} pickles objects other than tensors and plain containers, so glip_d2 refused "
            f"to load it (torch.load(weights_only=True): {e}). If you trust the file, convert it "
            "once: `python -m glip_d2.checkpoint.convert IN OUT.pth --trust-pickle`, and use "
            "OUT.pth."
        ) from e
    except Exception as e:  # zip/pickle corruption surfaces as RuntimeError, KeyError, EOFError...
        raise RuntimeError(
            f"Could not read {path} as a PyTorch checkpoint ({type(e).__name__}: {e}); the file "
            "is corrupt, truncated, or not a checkpoint."
        ) from e
    if not isinstance(ckpt, dict):
        raise RuntimeError(
            f"{path} holds a {type(ckpt).__name__}, not a dict: expected a state dict or "
            '{"model": state_dict}.'
        )
    if not isinstance(ckpt.get("model", {}), dict):
        raise RuntimeError(
            f'{path}: ckpt["model"] is a {type(ckpt["model"]).__name__}, not a dict.'
        )
    return dict(ckpt) if "model" in ckpt else {"model": ckpt}


def to_glip_d2_state_dict(sd: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """Any GLIP state dict -> glip_d2 names.

    Official ones are converted with :func:`convert_official_state_dict`; glip_d2 / Detectron2
    ones only lose a DDP "module." prefix.

    Returns:
        (state dict, report) with report keys "source" ("official" or "glip_d2"), "prefix"
        (the "module." prefix removed, or ""), "ignored" [(key, reason)] and "unmapped" [key].
    """
    prefix = "module." if sd and all(k.startswith("module.") for k in sd) else ""
    if is_official_glip_state_dict(sd):
        converted, report = convert_official_state_dict(sd)
        return converted, dict(report, source="official", prefix=prefix)
    out = {k[len(prefix) :]: v for k, v in sd.items()}
    return out, {"source": "glip_d2", "prefix": prefix, "ignored": [], "unmapped": []}


def _swin_depths(sd) -> Tuple[int, ...]:
    blocks = {}
    for k in sd:
        m = _SWIN_BLOCK.match(k)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            blocks[stage] = max(blocks.get(stage, -1), block)
    return tuple(blocks[s] + 1 for s in sorted(blocks))


def describe_variant(sd: Dict[str, torch.Tensor]) -> str:
    """A readable name for the architecture of a glip_d2 state dict (shapes only are used).

    E.g. "GLIP-L (Swin embed dim 192, depths (2, 2, 18, 2), 8 tower blocks, deep fusion on,
    text width 768)".
    """
    embed = sd.get(_EMBED_KEY)
    embed_dim = int(embed.shape[0]) if embed is not None else None
    depths = _swin_depths(sd)
    tower = {int(m.group(1)) for m in map(_TOWER_BLOCK.match, sd) if m}
    fused = any(k.startswith("head.tower.blocks.") and ".fuse." in k for k in sd)
    word_emb = sd.get("language_backbone.model.embeddings.word_embeddings.weight")
    text_dim = int(word_emb.shape[1]) if word_emb is not None else None
    name = "a custom GLIP"
    if embed_dim == 96 and depths == (2, 2, 6, 2) and len(tower) == 6 and text_dim == 768:
        name = "GLIP-T (B/C)" if fused else "GLIP-T (A)"
    elif embed_dim == 192 and depths == (2, 2, 18, 2) and len(tower) == 8 and fused:
        name = "GLIP-L"
    return (
        f"{name} (Swin embed dim {embed_dim}, depths {depths}, {len(tower)} tower blocks, "
        f"deep fusion {'on' if fused else 'off'}, text width {text_dim})"
    )


def _is_full_glip(sd) -> bool:
    return any(k.startswith(("head.tower.", "head.scorer.")) for k in sd)


def check_variant(model: nn.Module, converted: Dict[str, torch.Tensor]) -> None:
    """Raise a clear error when a checkpoint of another GLIP variant meets this config.

    A checkpoint with a grounding head ("head.tower.*" keys) must match the model's shapes and
    its Swin / fusion-tower structure exactly; without the check Detectron2 would skip every
    mismatching tensor with a warning and run a partly random model. Checkpoints without a
    head (e.g. backbone-only initialisations) are not checked.

    Raises:
        ValueError: naming the variant of the checkpoint and of the config.
    """
    if not _is_full_glip(converted):
        return
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    own = model.state_dict()
    problems = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in converted.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]

    def structural(keys):
        return {
            k
            for k in keys
            if k.startswith(("backbone.", "head.")) and not k.endswith(_REBUILT_BUFFERS)
        }

    only_ckpt = sorted(structural(converted) - set(own))
    only_model = sorted(structural(own) - set(converted))
    if only_ckpt:
        problems.append(f"{len(only_ckpt)} checkpoint tensors the model lacks, e.g. {only_ckpt[0]}")
    if only_model:
        problems.append(
            f"{len(only_model)} model tensors the checkpoint lacks, e.g. {only_model[0]}"
        )
    if problems:
        raise ValueError(
            f"The checkpoint is {describe_variant(converted)}, but the config builds "
            f"{describe_variant(own)}. Use the config that matches the checkpoint "
            "(configs/glip_swin_t.yaml for GLIP-T (B/C), glip_A_swin_t.yaml for GLIP-T (A), "
            "glip_swin_l.yaml for GLIP-L, or the config the checkpoint was trained with). "
            "Details: " + "; ".join(problems[:5])
        )


class GLIPCheckpointer(DetectionCheckpointer):
    """`MODEL.WEIGHTS` may be a glip_d2 checkpoint, a Detectron2 one, a `.safetensors` file or an
    official GLIP `.pth` (`{"model": {"module.backbone.body...": ...}}`), detected and converted
    on load. Files are read with `torch.load(weights_only=True)`: no pickled code is executed.
    A full GLIP checkpoint of another variant than the model raises (:func:`check_variant`).
    """

    def _load_file(self, filename):
        if filename.endswith(".pkl"):
            return super()._load_file(filename)
        ckpt = read_checkpoint(filename)
        sd, report = to_glip_d2_state_dict(ckpt["model"])
        for key, reason in report["ignored"]:
            logger.info(f"Official key ignored: {key} ({reason})")
        if report["unmapped"]:
            logger.warning(
                "Official keys with no glip_d2 counterpart: " + ", ".join(report["unmapped"])
            )
        check_variant(self.model, sd)
        if report["source"] == "official":
            return {"model": sd, "__author__": "glip_official", "matching_heuristics": False}
        ckpt["model"] = sd
        ckpt.setdefault("matching_heuristics", False)
        return ckpt
