"""Convert a GLIP checkpoint to glip_d2 names once, so later loads need no conversion.

    python -m glip_d2.checkpoint.convert glip_tiny_model_o365_goldg.pth glip_t.pth \\
        --config configs/glip_swin_t.yaml
    python -m glip_d2.checkpoint.convert glip_tiny_model_o365_goldg.pth glip_t.safetensors
    python -m glip_d2.checkpoint.convert output/model_final.pth release.safetensors --weights ema

The output is a ``{"model": state_dict}`` (``.pth``) or a flat ``.safetensors`` file; both
load with ``MODEL.WEIGHTS``. The input's ``__author__`` and ``matching_heuristics`` entries (a
Detectron2 / torchvision / Caffe2 model-zoo ``.pkl`` whose names Detectron2 matches to the model's
by suffix) are kept: next to the state dict in a ``.pth``, as safetensors metadata (strings) in a
``.safetensors``; so the output loads like the input did.

EMA weights: a glip_d2 training checkpoint (``SOLVER.EMA_DECAY > 0``) has an "ema" entry, which
``TEST.USE_EMA`` evaluates; a ``.pth`` output keeps it next to "model" (so the output evaluates
like the input), a ``.safetensors`` output (one state dict) cannot, and says so. An official GLIP
checkpoint's EMA ("model_ema", next to "model", "optimizer", "scheduler", "iteration") is not
what official GLIP's test scripts or glip_d2 evaluate: it is left out (reported).
``--weights ema`` writes the EMA weights ("ema", or the official "model_ema" through the same
renaming as "model") as the output's "model" instead of the raw weights.

The report lists the official keys that were ignored (with the reason), those no rule maps, and
every top-level entry of the input that was not written (training state such as "optimizer",
"scheduler", "iteration"; an EMA that is not kept), with why. With ``--config`` the result (the
kept EMA too) is checked against the model that config builds (built on the meta device: no
memory, no weights; names matched as the checkpointer will when ``matching_heuristics`` is on)
and a checkpoint of another GLIP variant is refused before anything is written.
"""

import argparse
import logging
import os
import sys
from typing import Dict, List, Optional, Tuple

import torch

from ..atomic_file import complete_temp_file
from .checkpointer import (
    atomic_torch_save,
    check_coverage,
    check_shapes,
    check_variant,
    read_checkpoint,
    to_glip_d2_state_dict,
)

__all__ = [
    "build_model_skeleton",
    "compare_with_model",
    "convert_checkpoint",
    "format_report",
    "main",
    "save_state_dict",
]

logger = logging.getLogger(__name__)

_FORMATS = (".pth", ".safetensors")
# Checkpoint entries besides "model" that change how a checkpoint loads (Detectron2's name
# matching, and its Caffe2 renaming for "__author__": "Caffe2"); a conversion keeps them.
_CARRIED = ("__author__", "matching_heuristics")
# The EMA weights: glip_d2's trainer saves them as "ema" (evaluated with TEST.USE_EMA), official
# GLIP (maskrcnn-benchmark) as "model_ema" (its test scripts evaluate "model" only).
_EMA_ENTRIES = ("ema", "model_ema")
_WEIGHTS = ("model", "ema")
# Entries that Detectron2's / glip_d2's trainer and official GLIP's save to resume training.
_TRAINING_STATE = ("optimizer", "scheduler", "iteration", "trainer", "grad_scaler")
# Why an entry of the input is not written (the report's "dropped").
_WHY = {
    "training": "training state, not needed to load the weights",
    "other": "not read when the weights are loaded",
    "raw": "the raw weights; --weights ema writes the EMA weights as 'model' in their place",
    "official_ema": "the official EMA; official GLIP and glip_d2 evaluate 'model' "
    "(--weights ema writes it instead)",
    "safetensors_ema": "not written (a .safetensors file holds one state dict); --weights ema "
    "writes the EMA weights instead",
    "empty_ema": "empty: no EMA weights to write",
    "official_names": "official GLIP names were converted to glip_d2's: no name matching needed",
}


def _safetensors_metadata(extra: Dict) -> Dict[str, str]:
    """``extra`` as safetensors metadata (str -> str), read back by
    :func:`~glip_d2.checkpoint.read_checkpoint`.

    Raises:
        ValueError: for an entry that the metadata cannot carry faithfully.
    """
    meta = {}
    if "__author__" in extra:
        if not isinstance(extra["__author__"], str):
            raise ValueError(
                f"The checkpoint's __author__ is a {type(extra['__author__']).__name__}, not a "
                "string, so a .safetensors file (string metadata) cannot keep it; convert to "
                ".pth instead."
            )
        meta["__author__"] = extra["__author__"]
    if "matching_heuristics" in extra:
        if not isinstance(extra["matching_heuristics"], bool):
            raise ValueError(
                f"The checkpoint's matching_heuristics is {extra['matching_heuristics']!r}, not "
                "True or False, so a .safetensors file cannot keep it; convert to .pth instead."
            )
        meta["matching_heuristics"] = str(extra["matching_heuristics"])
    unknown = sorted(set(extra) - set(_CARRIED))
    if unknown:
        raise ValueError(f"Only {_CARRIED} can be kept next to the state dict, not {unknown}.")
    return meta


def save_state_dict(
    sd: Dict[str, torch.Tensor],
    path: str,
    extra: Optional[Dict] = None,
    ema: Optional[Dict[str, torch.Tensor]] = None,
) -> None:
    """Write a state dict as ``{"model": sd, "ema": ema, **extra}`` (``.pth``) or as a
    ``.safetensors`` file with ``extra`` in its metadata, through a temporary file and a rename
    (a failed write leaves no partial output).

    Args:
        sd: the state dict.
        path: the output, ``.pth`` or ``.safetensors``.
        extra: the input's ``__author__`` / ``matching_heuristics`` entries, if any.
        ema: EMA weights (glip_d2 keys), written as the ``.pth``'s "ema" entry, if any.

    Raises:
        ValueError: for another file extension, an ``ema`` with a ``.safetensors`` path (a file
            holds one state dict), or (``.safetensors``) an entry of ``extra`` that string
            metadata cannot carry; nothing is written then.
    """
    extra = dict(extra or {})
    if not path.endswith(_FORMATS):
        raise ValueError(f"Output {path!r} must end with one of {_FORMATS}.")
    if ema is not None and path.endswith(".safetensors"):
        raise ValueError(
            f"A .safetensors file holds one state dict, so {path!r} cannot keep the EMA weights "
            "next to the model's; write a .pth, or the EMA weights alone (--weights ema)."
        )
    meta = _safetensors_metadata(extra) if path.endswith(".safetensors") else {}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".pth"):
        entries = {"model": sd} if ema is None else {"model": sd, "ema": ema}
        atomic_torch_save(dict(entries, **extra), path)
        return
    from safetensors.torch import save_file

    # safetensors stores neither views of shared memory nor non-contiguous tensors.
    seen, flat = set(), {}
    for key, value in sd.items():
        value = value.detach().cpu().contiguous()
        ptr = value.untyped_storage().data_ptr()
        flat[key] = value.clone() if ptr in seen else value
        seen.add(ptr)
    # written by path (safetensors' save() would hold a second copy of the file in memory)
    with complete_temp_file(path, lambda f: None, binary=True) as tmp:
        save_file(flat, tmp, metadata=dict({"format": "pt", "producer": "glip_d2"}, **meta))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)


def build_model_skeleton(cfg):
    """Build the model of ``cfg`` on the meta device: every shape, no memory, no weight loading.

    Falls back to a CPU build (slower) when a module cannot be built on the meta device.
    """
    from detectron2.modeling import build_model

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED = False
    cfg.MODEL.WEIGHTS = ""
    cfg.DATASETS.TEST = ()
    try:
        cfg.MODEL.DEVICE = "meta"
        with torch.device("meta"):
            return build_model(cfg)
    except (NotImplementedError, RuntimeError) as e:  # a module reads a tensor value while built
        logger.warning(f"Cannot build the model on the meta device ({e}); building it on CPU.")
        cfg.MODEL.DEVICE = "cpu"
        return build_model(cfg)


def compare_with_model(
    model, sd: Dict[str, torch.Tensor], extra: Optional[Dict] = None
) -> Dict[str, List[str]]:
    """Keys of the model's state dict absent from ``sd`` ("missing") and the reverse
    ("unexpected"), after :func:`check_variant` (which raises on another GLIP variant),
    :func:`check_coverage` (which raises when ``sd`` provides under half of the model) and
    :func:`check_shapes` (which raises on a tensor of another shape than the model's).

    With ``extra["matching_heuristics"]`` the names are first matched to the model's as the
    checkpointer will match them on load (Detectron2's heuristics), and the checks see the result.
    """
    extra = extra or {}
    if extra.get("matching_heuristics", False):
        from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

        sd = align_and_update_state_dicts(
            model.state_dict(), dict(sd), c2_conversion=extra.get("__author__") == "Caffe2"
        )
    check_variant(model, sd)
    check_coverage(model, sd, source="The converted checkpoint")
    check_shapes(model, sd, source="The converted checkpoint")
    own = model.state_dict()
    return {
        "missing": sorted(k for k in own if k not in sd),
        "unexpected": sorted(k for k in sd if k not in own),
    }


def _has_weights(value) -> bool:
    """Whether a checkpoint entry holds something (an empty dict or None is no EMA)."""
    return value is not None and not (isinstance(value, dict) and not value)


def _tensor_state_dict(ckpt: Dict, entry: str, src: str) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """``ckpt[entry]`` in glip_d2 names (:func:`to_glip_d2_state_dict`) and its report.

    Raises:
        ValueError: when the entry is not a dict or holds non-tensor values.
    """
    what = "the state dict" if entry == "model" else f"its {entry!r} entry (EMA weights)"
    if not isinstance(ckpt[entry], dict):
        raise ValueError(f"{src}: {what} is a {type(ckpt[entry]).__name__}, not a state dict.")
    sd, report = to_glip_d2_state_dict(ckpt[entry])
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{src}: {what} holds non-tensor values, e.g. {bad[0]!r}.")
    return sd, report


def _why_dropped(name: str, ckpt: Dict, weights: str, dst: str) -> str:
    """Why the input's entry ``name`` is not written to ``dst``."""
    if name == "model":
        return _WHY["raw"]
    if name in _EMA_ENTRIES:
        if not _has_weights(ckpt[name]):
            return _WHY["empty_ema"]
        if weights == "ema":  # both "ema" and "model_ema": the glip_d2 one was written
            return "a second EMA entry; --weights ema wrote 'ema'"
        if name == "model_ema":
            return _WHY["official_ema"]
        return _WHY["safetensors_ema"] if dst.endswith(".safetensors") else _WHY["other"]
    if name in _CARRIED:
        return _WHY["official_names"]
    return _WHY["training"] if name in _TRAINING_STATE else _WHY["other"]


def convert_checkpoint(
    src: str,
    dst: str,
    config_file: Optional[str] = None,
    trust_pickle: bool = False,
    weights: str = "model",
) -> Dict:
    """Read ``src``, rename it to glip_d2 keys, optionally check it against ``config_file``, and
    write ``dst`` (``.pth`` or ``.safetensors``).

    Args:
        src: official GLIP or glip_d2 checkpoint (``.pth`` / ``.safetensors``, or a Detectron2
            ``.pkl`` read with the restricted unpickler).
        dst: output path; nothing is written when a check fails.
        config_file: a glip_d2 config whose model the checkpoint must fit.
        trust_pickle: read ``src`` with ``torch.load(weights_only=False)`` (runs pickled code:
            only for files you trust).
        weights: which weights become the output's "model": "model" (the input's "model", as
            official GLIP's test scripts evaluate; a glip_d2 "ema" entry is kept next to it in
            a ``.pth``), or "ema" (the input's EMA weights: glip_d2's "ema", or official GLIP's
            "model_ema" renamed like "model"; no separate "ema" is written).

    Returns:
        the report: "source", "prefix", "ignored", "unmapped", "num_tensors" (of the weights
        written as "model"), "kept" (the input's ``__author__`` / ``matching_heuristics``
        entries written with the output), "weights" (the input entry written as "model"),
        "ema_tensors" (how many EMA tensors were written as "ema"; 0 for none), "dropped"
        [(entry, reason)] (every top-level input entry not written), and with a config
        "missing" / "unexpected" (and, for a kept EMA, "ema_missing" / "ema_unexpected").

    Raises:
        ValueError: when the checkpoint (or its kept EMA) is another GLIP variant than the
            config, provides under half of its model's parameters or has a tensor of another
            shape than it; when a state dict holds non-tensor values; when ``weights`` is "ema"
            and the input has no EMA weights; when ``dst`` has an unsupported extension, or a
            ``.safetensors`` ``dst`` cannot keep the input's entries.
        FileNotFoundError, RuntimeError: when ``src`` cannot be read.
    """
    if weights not in _WEIGHTS:
        raise ValueError(f"weights must be 'model' or 'ema', not {weights!r}.")
    if not dst.endswith(_FORMATS):
        raise ValueError(f"Output {dst!r} must end with one of {_FORMATS}.")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("The output must not overwrite the input checkpoint.")
    ckpt = read_checkpoint(src, trust_pickle=trust_pickle)
    ema_name = next((n for n in _EMA_ENTRIES if n in ckpt and _has_weights(ckpt[n])), None)
    if weights == "ema" and ema_name is None:
        raise ValueError(
            f"{src} has no EMA weights to write with --weights ema (no non-empty 'ema' entry, "
            f"as glip_d2's trainer saves with SOLVER.EMA_DECAY > 0, nor official GLIP's "
            f"'model_ema'); its entries: {', '.join(map(str, ckpt))}. Without --weights ema "
            "its 'model' is written."
        )
    written = "model" if weights == "model" else ema_name
    sd, report = _tensor_state_dict(ckpt, written, src)
    report["num_tensors"] = len(sd)
    report["weights"] = written
    # glip_d2's EMA, evaluated with TEST.USE_EMA, stays next to "model" where the format allows
    ema_sd = None
    if weights == "model" and ema_name == "ema" and dst.endswith(".pth"):
        ema_sd, _ = _tensor_state_dict(ckpt, "ema", src)
    report["ema_tensors"] = len(ema_sd) if ema_sd is not None else 0
    # official GLIP names were converted to glip_d2's: nothing left for name matching to do
    kept = {} if report["source"] == "official" else {k: ckpt[k] for k in _CARRIED if k in ckpt}
    if dst.endswith(".safetensors"):
        _safetensors_metadata(kept)  # refuse before any check or write
    report["kept"] = kept
    written_entries = {written, *kept} | ({"ema"} if ema_sd is not None else set())
    report["dropped"] = [
        (name, _why_dropped(name, ckpt, weights, dst))
        for name in ckpt
        if name not in written_entries
    ]
    if config_file:
        from detectron2.config import get_cfg

        from ..config import add_glip_config

        from ..model_zoo import resolve_config_file

        cfg = get_cfg()
        add_glip_config(cfg)
        cfg.merge_from_file(resolve_config_file(config_file))  # a file or a shipped config
        model = build_model_skeleton(cfg)
        report.update(compare_with_model(model, sd, kept))
        if ema_sd is not None:
            try:  # loaded by name, as TEST.USE_EMA loads it (no name matching)
                ema_check = compare_with_model(model, ema_sd)
            except ValueError as e:
                raise ValueError(
                    f"{src}: its EMA weights ('ema', kept next to 'model' and evaluated with "
                    f"TEST.USE_EMA) do not fit the model of {config_file}: {e}"
                ) from e
            report["ema_missing"] = ema_check["missing"]
            report["ema_unexpected"] = ema_check["unexpected"]
    save_state_dict(sd, dst, kept, ema=ema_sd)
    return report


def format_report(report: Dict, src: str, dst: str) -> str:
    """Human-readable summary of a conversion report."""
    weights = report.get("weights", "model")
    lines = [
        f"{src} ({'official GLIP' if report['source'] == 'official' else 'glip_d2'} names"
        f"{', prefix ' + repr(report['prefix']) + ' removed' if report['prefix'] else ''}) -> "
        f"{dst}: {report['num_tensors']} tensors"
        + (f" (the EMA weights, the input's {weights!r}, written as 'model')"
           if weights != "model" else "")
        + "."
    ]
    if report.get("ema_tensors"):
        lines.append(
            f"EMA weights kept as 'ema' (evaluated with TEST.USE_EMA): "
            f"{report['ema_tensors']} tensors"
        )
    if report.get("kept"):
        lines.append(
            "Kept from the input: "
            + ", ".join(f"{k}={v!r}" for k, v in report["kept"].items())
            + (" (loads with Detectron2's name matching)"
               if report["kept"].get("matching_heuristics") else "")
        )
    if "dropped" in report:
        lines.append(f"Input entries not written: {len(report['dropped'])}")
        reasons: Dict[str, List[str]] = {}  # entries with the same reason on one line
        for name, why in report["dropped"]:
            reasons.setdefault(why, []).append(str(name))
        lines += [f"  {', '.join(names)}: {why}" for why, names in reasons.items()]
    lines.append(f"Ignored official keys: {len(report['ignored'])}")
    lines += [f"  {k}: {reason}" for k, reason in report["ignored"]]
    lines.append(f"Unmapped official keys (no rule, dropped): {len(report['unmapped'])}")
    lines += [f"  {k}" for k in report["unmapped"]]
    for name in ("missing", "unexpected"):
        if name in report:
            lines.append(f"Keys {name} with respect to the config's model: {len(report[name])}")
            lines += [f"  {k}" for k in report[name]]
    for name in ("missing", "unexpected"):
        if f"ema_{name}" in report:
            keys = report[f"ema_{name}"]
            lines.append(f"EMA keys {name} with respect to the config's model: {len(keys)}")
            lines += [f"  {k}" for k in keys]
    return "\n".join(lines)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m glip_d2.checkpoint.convert",
        description="Convert an official GLIP checkpoint to glip_d2 names (.pth or .safetensors). "
        "Every input entry that is not written (training state, an EMA not kept) is reported.",
    )
    parser.add_argument(
        "input", help="official GLIP (or glip_d2) checkpoint: .pth, .safetensors or model-zoo .pkl"
    )
    parser.add_argument(
        "output",
        help="output file, .pth ({'model': state_dict}, plus the input's __author__ / "
        "matching_heuristics and a glip_d2 training checkpoint's 'ema') or .safetensors (one "
        "state dict; __author__ / matching_heuristics as metadata, no 'ema')",
    )
    parser.add_argument(
        "--config",
        help="glip_d2 config the checkpoint (and a kept 'ema') must fit (checked first)",
    )
    parser.add_argument(
        "--weights",
        choices=_WEIGHTS,
        default="model",
        help="the weights written as the output's 'model': 'model' (default; the input's raw "
        "weights, which official GLIP evaluates; a glip_d2 'ema' stays next to them in a .pth) "
        "or 'ema' (the input's EMA weights: glip_d2's 'ema' or official GLIP's 'model_ema', "
        "renamed like 'model'; an error when the input has none)",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="read the input with torch.load(weights_only=False) (.pkl: plain pickle.load); this "
        "runs code pickled in the file, so use it only for files from a source you trust",
    )
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point; returns the exit status (0 = written)."""
    args = get_parser().parse_args(argv)
    try:
        report = convert_checkpoint(
            args.input, args.output, args.config, args.trust_pickle, weights=args.weights
        )
    except (OSError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(report, args.input, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
