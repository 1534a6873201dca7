"""Detectron2 checkpointer that reads checkpoints safely, converts official GLIP ones, and refuses
a checkpoint of another GLIP variant than the config with an error that names both."""

import logging
import os
import pickle
import re
from typing import Dict, Tuple
from urllib.parse import parse_qs

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from torch import nn

from ..atomic_file import atomic_write, remove_abandoned
from .imagenet_swin import imagenet_swin_checkpoint, is_imagenet_swin_state_dict
from .official import convert_official_state_dict, is_official_glip_state_dict
from ..safe_pickle import load_pickle_weights

logger = logging.getLogger(__name__)

__all__ = [
    "GLIPCheckpointer",
    "atomic_torch_save",
    "check_coverage",
    "check_prompt_tuning",
    "check_shapes",
    "check_variant",
    "describe_variant",
    "read_checkpoint",
    "read_pkl_checkpoint",
    "to_glip_d2_state_dict",
]

# Buffers a model rebuilds itself; a checkpoint may or may not carry them.
_REBUILT_BUFFERS = ("relative_position_index", "position_ids", "num_batches_tracked")
_SWIN_BLOCK = re.compile(r"^backbone\.bottom_up\.layers\.(\d+)\.blocks\.(\d+)\.")
_TOWER_BLOCK = re.compile(r"^head\.tower\.blocks\.(\d+)\.")
_EMBED_KEY = "backbone.bottom_up.patch_embed.proj.weight"



def unwrap_model(model: nn.Module) -> nn.Module:
    """The model a DistributedDataParallel / DataParallel wrapper holds, or ``model`` itself."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model

def read_pkl_checkpoint(path: str, trust_pickle: bool = False) -> Dict:
    """Read a Detectron2 / Detectron-1 model-zoo `.pkl` the way Detectron2 interprets it, but
    through :func:`~glip_d2.safe_pickle.load_pickle_weights` (numpy arrays and plain
    containers only: no code from the file runs).

    Returns:
        ``{"model": {name: ndarray}, "__author__": ...}``; Detectron-1 / Caffe2 files (no
        "__author__") get ``"matching_heuristics": True`` and lose their "_momentum" blobs, as in
        Detectron2's own loader.
    """
    data = load_pickle_weights(path, trust_pickle=trust_pickle)
    if "model" in data and "__author__" in data:
        return data
    if "blobs" in data:  # detection models of Detectron-1 keep their weights under "blobs"
        data = data["blobs"]
    data = {k: v for k, v in data.items() if not str(k).endswith("_momentum")}
    return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}


def _unpickler_reason(error: Exception) -> str:
    """What torch's weights-only unpickler refused, in one line ("Unsupported class X" on torch
    2.3, "Unsupported global: GLOBAL X ..." on later releases, whose message around it spans
    several lines, carries terminal colour codes and advises weights_only=False)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", text)
    if found:
        return found.group(1).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_checkpoint(path: str, trust_pickle: bool = False) -> Dict:
    """Read a `.pth` / `.safetensors` / `.pkl` checkpoint into a dict with a "model" state dict.

    `.pth` files are read with `torch.load(weights_only=True)`: tensors, containers and plain
    values only, no pickled code is run. `.pkl` files (Detectron2 model zoo) are read with a
    restricted unpickler that only builds numpy arrays and plain containers
    (:func:`read_pkl_checkpoint`; their arrays are returned as tensors).

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
    if path.endswith(".pkl"):
        ckpt = read_pkl_checkpoint(path, trust_pickle=trust_pickle)
        ckpt["model"] = {
            k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v
            for k, v in ckpt["model"].items()
        }
        return ckpt
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            sd = load_file(path)
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as e:  # safetensors raises its own SafetensorError
            raise RuntimeError(
                f"Could not read {path} as safetensors ({type(e).__name__}: {e}); the file is "
                "corrupt or truncated."
            ) from e
        ckpt = {"model": sd}
        # Written by `python -m glip_d2.checkpoint.convert` from a .pkl / .pth that had them.
        if "__author__" in meta:
            ckpt["__author__"] = meta["__author__"]
        if "matching_heuristics" in meta:
            ckpt["matching_heuristics"] = meta["matching_heuristics"] == "True"
        return ckpt
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        raise RuntimeError(
            f"{path} pickles objects other than tensors and plain containers "
            f"({_unpickler_reason(e)}), so glip_d2 refused to load it with "
            "torch.load(weights_only=True). If you trust the file, convert it once: "
            "`python -m glip_d2.checkpoint.convert IN OUT.pth --trust-pickle`, and use OUT.pth."
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


# Optional sub-modules of the grounding head and the options that add them. A checkpoint and a
# config that differ in these only are the same GLIP variant with another head read-out.
_HEAD_OPTIONS = (
    ("head.cls_tower.", "MODEL.ATSS.NUM_CLS_CONVS"),
    ("head.region_context.", "MODEL.ATSS.REGION_CONTEXT_CONVS"),
    ("head.region_pool.", "MODEL.ATSS.REGION_POOL / REGION_POOL_HIDDEN / REGION_POOL_CHANNELS"),
    ("head.scorer.proj_region.", "MODEL.ATSS.REGION_PROJECTION"),
)


def _is_head_option(key: str) -> bool:
    """A grounding-head tensor outside the fusion tower (whose depth and fusion define the
    variant): box / centerness / scorer read-outs and the optional head modules."""
    return key.startswith("head.") and not key.startswith("head.tower.")


def _head_module(key: str) -> str:
    """The head module of ``key`` and, for an optional one, the option that adds it, e.g.
    "head.region_pool (MODEL.ATSS.REGION_POOL / ...)" for "head.region_pool.read.weight"."""
    for prefix, option in _HEAD_OPTIONS:
        if key.startswith(prefix):
            return f"{prefix[:-1]} ({option})"
    return key.rsplit(".", 1)[0]


def _head_modules(keys) -> str:
    return ", ".join(sorted({_head_module(k) for k in keys}))


def _variant_differences(own, converted) -> Dict[str, list]:
    """Keys on one side only ("only_ckpt", "only_model"; backbone and head tensors, buffers a
    model rebuilds left out) and keys on both sides with another shape ("shape")."""

    def structural(keys):
        return {
            k
            for k in keys
            if k.startswith(("backbone.", "head.")) and not k.endswith(_REBUILT_BUFFERS)
        }

    return {
        "shape": sorted(
            k
            for k, v in converted.items()
            if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
        ),
        "only_ckpt": sorted(structural(converted) - set(own)),
        "only_model": sorted(structural(own) - set(converted)),
    }


def check_variant(
    model: nn.Module, converted: Dict[str, torch.Tensor], partial_init_ok: bool = False
) -> None:
    """Raise a clear error when a checkpoint of another GLIP variant meets this config.

    A checkpoint with a grounding head ("head.tower.*" keys) must match the model's shapes and
    its Swin / fusion-tower structure exactly; without the check Detectron2 would skip every
    mismatching tensor with a warning and run a partly random model. Checkpoints without a
    head (e.g. backbone-only initialisations) are not checked.

    With ``partial_init_ok`` (fine-tuning), head tensors outside the fusion tower may differ:
    a config that adds or removes a head option (``MODEL.ATSS.NUM_CLS_CONVS``,
    ``REGION_CONTEXT_CONVS``, ``REGION_POOL``, ``REGION_PROJECTION``) takes the rest of the
    checkpoint, and the head modules it does not provide start from their initialisation
    (logged). The backbone, the fusion tower and every other shape must still match.

    Raises:
        ValueError: naming the variant of the checkpoint and of the config (or, when both read
            the same, saying so) and the tensors that differ.
    """
    if not _is_full_glip(converted):
        return
    model = unwrap_model(model)
    own = model.state_dict()
    diff = _variant_differences(own, converted)
    if partial_init_ok:
        tolerated = {name: [k for k in keys if _is_head_option(k)] for name, keys in diff.items()}
        diff = {name: [k for k in keys if not _is_head_option(k)] for name, keys in diff.items()}
    if any(diff.values()):
        problems = []
        if diff["shape"]:
            problems.append(
                f"{len(diff['shape'])} tensors with another shape: "
                + ", ".join(
                    f"{k} (checkpoint {tuple(converted[k].shape)} vs model {tuple(own[k].shape)})"
                    for k in diff["shape"][:4]
                )
                + (", ..." if len(diff["shape"]) > 4 else "")
            )
        if diff["only_ckpt"]:
            problems.append(
                f"{len(diff['only_ckpt'])} checkpoint tensors the model lacks "
                f"({_examples(diff['only_ckpt'])})"
            )
        if diff["only_model"]:
            problems.append(
                f"{len(diff['only_model'])} model tensors the checkpoint lacks "
                f"({_examples(diff['only_model'])})"
            )
        differing = [k for keys in diff.values() for k in keys]
        variants = describe_variant(converted), describe_variant(own)
        what, advice = _variant_mismatch(*variants, differing)
        raise ValueError(f"{what} {advice} Details: " + "; ".join(problems))
    if partial_init_ok and any(tolerated.values()):
        fresh = sorted(set(tolerated["only_model"]) | set(tolerated["shape"]))
        if fresh:
            logger.warning(
                f"Fine-tuning into another grounding head: {_head_modules(fresh)} "
                f"start from their initialisation ({len(fresh)} tensors the checkpoint lacks or "
                f"has with another shape: {_examples(fresh)})."
            )
        if tolerated["only_ckpt"]:
            logger.warning(
                f"Checkpoint head modules this config does not build are dropped: "
                f"{_head_modules(tolerated['only_ckpt'])} ({_examples(tolerated['only_ckpt'])})."
            )


def check_prompt_tuning(model: nn.Module, sd: Dict[str, object], partial_init_ok: bool = False) -> None:
    """A checkpoint that carries a tuned prompt needs a model that has a place for it.

    Prompt tuning (``MODEL.GLIP.TUNING prompt``) keeps the learned prompt in ``prompt_tuning.*``;
    a model built without it would leave those tensors unused and score every prompt with the
    text encoder: the zero-shot model's scores, not what was tuned.

    Raises:
        ValueError: for inference (``partial_init_ok`` False); as a training initialisation the
            learned prompt is dropped with a warning.
    """
    length = sd.get("prompt_tuning.length")
    if length is None or not int(torch.as_tensor(length)):  # no prompt, or one never trained
        return
    model = unwrap_model(model)
    if getattr(model, "prompt_tuning", None) is not None:
        return
    what = (
        "The checkpoint carries a tuned prompt (prompt_tuning.*, trained with MODEL.GLIP.TUNING "
        f"prompt), but this config builds no place for it (MODEL.GLIP.TUNING "
        f"{getattr(model, 'tuning', 'full')!r})"
    )
    if partial_init_ok:
        logger.warning(f"{what}: the learned prompt is dropped; training starts from the rest.")
        return
    raise ValueError(
        f"{what}, so the model would score with the text encoder: the zero-shot model's scores, "
        "not the tuned ones. Set MODEL.GLIP.TUNING prompt (with the training dataset's class "
        "names as the vocabulary), or load the checkpoint the tuning started from."
    )


def _variant_mismatch(ckpt_variant: str, own_variant: str, differing) -> Tuple[str, str]:
    """What differs between a checkpoint and the model, and what to do about it."""
    if all(_is_head_option(k) for k in differing):
        return (
            f"The checkpoint and the model the config builds are both {ckpt_variant} "
            f"(same backbone and fusion tower), but their grounding heads differ in "
            f"{_head_modules(differing)}.",
            "Use the config the checkpoint was trained with (the same MODEL.ATSS head "
            "options), or, to fine-tune the checkpoint into this head, load it as a "
            "training initialisation (train_net.py training; "
            "GLIPCheckpointer(partial_init_ok=True)): the differing head modules then start "
            "from their initialisation.",
        )
    if ckpt_variant != own_variant:
        what = f"The checkpoint is {ckpt_variant}, but the config builds {own_variant}."
    else:
        what = (
            f"The checkpoint and the model the config builds are both {ckpt_variant}, but "
            "their layers differ."
        )
    return what, (
        "Use the config that matches the checkpoint "
        "(configs/glip_swin_t.yaml for GLIP-T (B/C), glip_A_swin_t.yaml for GLIP-T (A), "
        "glip_swin_l.yaml for GLIP-L, or the config the checkpoint was trained with)."
    )


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _examples(keys, limit: int = 4) -> str:
    keys = sorted(keys)
    if not keys:
        return "none"
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_coverage(
    model: nn.Module,
    sd: Dict[str, object],
    source: str = "the checkpoint",
    min_fraction: float = 0.5,
    partial_init_ok: bool = False,
) -> Dict[str, float]:
    """Refuse a checkpoint that leaves most of the model at its random initialisation.

    ``matched`` is the share of the model's parameters (counted in elements) that ``sd`` provides
    under the same name and shape; ``used`` the share of ``sd``'s tensors that the model takes.
    A checkpoint passes when ``matched >= min_fraction``, or, with ``partial_init_ok`` (a
    training initialisation such as ImageNet backbone weights), when ``used >= min_fraction``.
    A checkpoint that matches no parameter at all never passes. A model whose checkpoints are
    meant to provide a part of it names that part's parameter prefixes in its
    ``checkpoint_coverage_prefixes`` (RegionCLIP's student: a detector's backbone and RPN);
    ``matched`` then counts those parameters only.

    Args:
        model: the model to be loaded (DDP wrappers are unwrapped).
        sd: the state dict in the model's names (after conversion / name matching).
        source: the checkpoint, for the message.
        min_fraction: the threshold (0.5 = half).
        partial_init_ok: accept a checkpoint that covers a part of the model only.

    Returns:
        {"matched": fraction of the model, "used": fraction of the checkpoint}.

    Raises:
        ValueError: listing what the model expects and what the checkpoint holds.
    """
    model = unwrap_model(model)
    part = tuple(getattr(model, "checkpoint_coverage_prefixes", ()))
    params = {k: tuple(p.shape) for k, p in model.named_parameters() if not part or k.startswith(part)}
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = {
        k: tuple(v.shape) for k, v in sd.items() if isinstance(v, (torch.Tensor, np.ndarray))
    }
    total = sum(_numel(s) for s in params.values()) or 1
    matched = sum(_numel(s) for k, s in params.items() if shapes.get(k) == s) / total
    ckpt_total = sum(_numel(s) for s in shapes.values()) or 1
    used = sum(_numel(s) for k, s in shapes.items() if own.get(k) == s) / ckpt_total
    stats = {"matched": matched, "used": used}
    ok = matched >= min_fraction or (partial_init_ok and used >= min_fraction)
    if matched > 0 and ok:
        return stats
    wrong_shape = sorted(k for k, s in shapes.items() if k in own and own[k] != s)
    need = (
        f"at least {min_fraction:.0%} of the model, or (as an initialisation) {min_fraction:.0%} "
        "of the checkpoint's own tensors used"
        if partial_init_ok
        else f"at least {min_fraction:.0%}"
    )
    of_what = (f"the model's parameters under {', '.join(part)}" if part
               else "the model's parameters")
    raise ValueError(
        f"{source} provides {matched:.1%} of {of_what} ({need} needed); loading it "
        "would leave the model mostly random. "
        f"The model expects {len(own)} tensors such as {_examples(own, 3)}; "
        f"the checkpoint holds {len(shapes)} tensors such as {_examples(shapes, 3)}; "
        f"{sum(1 for k, s in shapes.items() if own.get(k) == s)} match by name and shape"
        + (f", {len(wrong_shape)} have the name but another shape ({_examples(wrong_shape, 2)})"
           if wrong_shape else "")
        + ". Check that MODEL.WEIGHTS is a checkpoint of the model this config builds "
        "(a glip_d2 or official GLIP checkpoint of the same variant)."
    )


def check_shapes(model: nn.Module, sd: Dict[str, object], source: str = "The checkpoint") -> None:
    """Refuse, for inference, a checkpoint with a tensor of another shape than the model's.

    Detectron2 skips such a tensor with a warning and leaves the model's initialisation in its
    place: what fine-tuning into another head wants (``partial_init_ok``, not checked then), but
    at inference that part of the model computes with random weights. :func:`check_variant`
    names the variants of full GLIP checkpoints first; this covers every other tensor (e.g. the
    box head of a two-stage model, the text encoder).

    Raises:
        ValueError: naming the tensors and both shapes.
    """
    own = unwrap_model(model).state_dict()
    wrong = sorted(
        k
        for k, v in sd.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    )
    if not wrong:
        return
    shown = ", ".join(
        f"{k} (checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)})" for k in wrong[:4]
    )
    raise ValueError(
        f"{source} has {len(wrong)} tensors with another shape than the model's: {shown}"
        + (", ..." if len(wrong) > 4 else "")
        + "; loaded for inference, they would stay at their random initialisation. Use the "
        "config the checkpoint was trained with, or, to fine-tune it into this model, load it "
        "as a training initialisation (train_net.py training; "
        "GLIPCheckpointer(partial_init_ok=True)), where they start from their initialisation."
    )


class GLIPCheckpointer(DetectionCheckpointer):
    """`MODEL.WEIGHTS` may be a glip_d2 checkpoint, a Detectron2 one, a `.safetensors` file or an
    official GLIP `.pth` (`{"model": {"module.backbone.body...": ...}}`), detected and converted
    on load, or an ImageNet Swin release (`swin_tiny_patch4_window7_224.pth`), mapped onto the
    Swin backbone (:mod:`glip_d2.checkpoint.imagenet_swin`; a training initialisation). No
    pickled code is executed on any load path: `.pth` files are read with
    `torch.load(weights_only=True)`, Detectron2 model-zoo `.pkl` files with a restricted
    unpickler that builds numpy arrays and plain containers only (`glip_d2/safe_pickle.py`).
    A full GLIP checkpoint of another variant than the model raises (:func:`check_variant`), and
    so does a checkpoint that provides too little of the model (:func:`check_coverage`) and,
    unless ``partial_init_ok``, one with a tensor of another shape than the model's
    (:func:`check_shapes`).
    As with Detectron2's checkpointer, a path ending with ``?matching_heuristics=True`` matches
    the checkpoint's names to the model's by suffix (e.g. backbone weights saved without the
    "backbone." prefix); any other query is an error.
    Checkpoints are written atomically (temporary file + rename), so a failed write (a full disk)
    leaves no partial file and `last_checkpoint` names only complete files.

    Args (beyond Detectron2's):
        partial_init_ok: accept a checkpoint that initialises a part of the model only (ImageNet
            backbone weights for training, or a GLIP checkpoint fine-tuned into a config with
            other head options: see :func:`check_variant`; tensors of another shape are then
            skipped with Detectron2's warning); inference entry points leave it False.
        min_fraction: see :func:`check_coverage`.
    """

    def __init__(
        self,
        model,
        save_dir="",
        *,
        partial_init_ok: bool = False,
        min_fraction: float = 0.5,
        **kwargs,
    ):
        super().__init__(model, save_dir, **kwargs)
        self.partial_init_ok = partial_init_ok
        self.min_fraction = min_fraction
        self._loading = None

    def load(self, path, *args, **kwargs):
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = None
            # Detectron2 resets it on success only; a refused file must not block the next load.
            self._parsed_url_during_load = None

    def _matching_heuristics_query(self) -> bool:
        """Whether ``MODEL.WEIGHTS`` ends with ``?matching_heuristics=True``, as Detectron2's
        checkpointer reads it (``load`` strips the query from the file name and keeps it in
        ``_parsed_url_during_load``). Any other query is an error, as in Detectron2.

        Raises:
            ValueError: for another query, or a value other than True / False.
        """
        parsed = getattr(self, "_parsed_url_during_load", None)
        if parsed is None or not parsed.query:
            return False
        queries = parse_qs(parsed.query, keep_blank_values=True)
        values = queries.pop("matching_heuristics", None)
        usage = (
            "The only query a checkpoint path takes is '?matching_heuristics=True' (match the "
            "checkpoint's names to the model's by suffix, as Detectron2 does)."
        )
        if queries:
            raise ValueError(
                f"Unsupported query {', '.join(sorted(queries))} in the checkpoint path "
                f"{parsed.geturl()!r}. {usage} Remove the rest of the query (or rename a file "
                "whose name contains '?')."
            )
        if values is None:
            return False
        if len(values) != 1 or values[0].lower() not in ("true", "false"):
            raise ValueError(
                f"matching_heuristics={'&'.join(values)!r} in the checkpoint path "
                f"{parsed.geturl()!r} is not True or False. {usage}"
            )
        return values[0].lower() == "true"

    def _load_file(self, filename):
        heuristics = self._matching_heuristics_query()  # a bad query fails before the read
        if filename.endswith(".pkl"):
            # Detectron2 would pickle.load the file (running any code in it); read it safely.
            ckpt = read_pkl_checkpoint(filename)
        else:
            ckpt = read_checkpoint(filename)
            if is_imagenet_swin_state_dict(ckpt["model"]):  # e.g. swin_tiny_patch4_window7_224
                # Mapped explicitly; a ?matching_heuristics query is not needed (nor used).
                return imagenet_swin_checkpoint(unwrap_model(self.model), ckpt["model"], filename)
            sd, report = to_glip_d2_state_dict(ckpt["model"])
            for key, reason in report["ignored"]:
                logger.info(f"Official key ignored: {key} ({reason})")
            if report["unmapped"]:
                logger.warning(
                    "Official keys with no glip_d2 counterpart: " + ", ".join(report["unmapped"])
                )
            if report["source"] == "official":
                ckpt = {"model": sd, "__author__": "glip_official", "matching_heuristics": False}
            else:
                ckpt["model"] = sd
                ckpt.setdefault("matching_heuristics", False)
        if heuristics:  # as in Detectron2, the query turns name matching on, never off
            ckpt["matching_heuristics"] = True
        return ckpt

    def _load_model(self, checkpoint):
        if checkpoint.get("matching_heuristics", False):
            # Name matching first (as Detectron2 does), so the checks see the model's names.
            self._convert_ndarray_to_tensor(checkpoint["model"])
            checkpoint["model"] = align_and_update_state_dicts(
                self.model.state_dict(),
                checkpoint["model"],
                c2_conversion=checkpoint.get("__author__", None) == "Caffe2",
            )
            checkpoint["matching_heuristics"] = False
        sd = checkpoint["model"]
        prefix = "module." if sd and all(str(k).startswith("module.") for k in sd) else ""
        view = {k[len(prefix):]: v for k, v in sd.items()}
        check_variant(self.model, view, partial_init_ok=self.partial_init_ok)
        check_prompt_tuning(self.model, view, partial_init_ok=self.partial_init_ok)
        stats = check_coverage(
            self.model,
            view,
            source=f"Checkpoint {self._loading or 'file'}",
            min_fraction=self.min_fraction,
            partial_init_ok=self.partial_init_ok,
        )
        if not self.partial_init_ok:
            check_shapes(self.model, view, source=f"Checkpoint {self._loading or 'file'}")
        logger.info(
            f"Checkpoint covers {stats['matched']:.1%} of the model's parameters "
            f"({stats['used']:.1%} of its tensors used)."
        )
        return super()._load_model(checkpoint)

    def save(self, name: str, **kwargs) -> None:
        """Like Detectron2's, but written to a temporary file and renamed when complete."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"), lambda f: f.write(last_filename_basename))

    def remove_abandoned_saves(self) -> None:
        """Remove the temporary files of checkpoint writes that a killed run of this folder
        left behind (:func:`glip_d2.atomic_file.remove_abandoned`), logging what was freed."""
        if not self.save_dir or not self.save_to_disk:
            return
        removed = remove_abandoned(self.save_dir)
        if removed:
            size = sum(s for _, s in removed) / 2**20
            self.logger.info(
                f"Removed {len(removed)} incomplete file(s) ({size:.1f} MiB) that a killed run "
                f"left in {self.save_dir}: {', '.join(os.path.basename(p) for p, _ in removed)}"
            )


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save(obj, path)`` through a temporary file in the same folder and a rename: the
    file at ``path`` is either the old one or the complete new one, never a partial write.

    Raises:
        OSError (e.g. no space left): after removing the temporary file.
    """
    atomic_write(path, lambda f: torch.save(obj, f), binary=True)
