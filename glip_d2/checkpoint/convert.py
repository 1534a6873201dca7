"""Convert a GLIP checkpoint to glip_d2 names once, so later loads need no conversion.

    python -m glip_d2.checkpoint.convert glip_tiny_model_o365_goldg.pth glip_t.pth \\
        --config configs/glip_swin_t.yaml
    python -m glip_d2.checkpoint.convert glip_tiny_model_o365_goldg.pth glip_t.safetensors

The output is a plain ``{"model": state_dict}`` (``.pth``) or a flat ``.safetensors`` file; both
load with ``MODEL.WEIGHTS``. The input's ``__author__`` and ``matching_heuristics`` entries (a
Detectron2 / torchvision / Caffe2 model-zoo ``.pkl`` whose names Detectron2 matches to the model's
by suffix) are kept: next to the state dict in a ``.pth``, as safetensors metadata (strings) in a
``.safetensors``; so the output loads like the input did. The report lists the official keys that
were ignored (with the reason) and those no rule maps. With ``--config`` the result is also
checked against the model that config builds (built on the meta device: no memory, no weights;
names matched as the checkpointer will when ``matching_heuristics`` is on) and a checkpoint of
another GLIP variant is refused before anything is written.
"""

import argparse
import logging
import os
import sys
from typing import Dict, List, Optional

import torch

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


def save_state_dict(sd: Dict[str, torch.Tensor], path: str, extra: Optional[Dict] = None) -> None:
    """Write a state dict as ``{"model": sd, **extra}`` (``.pth``) or as a ``.safetensors`` file
    with ``extra`` in its metadata, through a temporary file and a rename (a failed write leaves
    no partial output).

    Args:
        sd: the state dict.
        path: the output, ``.pth`` or ``.safetensors``.
        extra: the input's ``__author__`` / ``matching_heuristics`` entries, if any.

    Raises:
        ValueError: for another file extension, or (``.safetensors``) an entry of ``extra`` that
            string metadata cannot carry; nothing is written then.
    """
    extra = dict(extra or {})
    if not path.endswith(_FORMATS):
        raise ValueError(f"Output {path!r} must end with one of {_FORMATS}.")
    meta = _safetensors_metadata(extra) if path.endswith(".safetensors") else {}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".pth"):
        atomic_torch_save(dict({"model": sd}, **extra), path)
        return
    from safetensors.torch import save_file

    # safetensors stores neither views of shared memory nor non-contiguous tensors.
    seen, flat = set(), {}
    for key, value in sd.items():
        value = value.detach().cpu().contiguous()
        ptr = value.untyped_storage().data_ptr()
        flat[key] = value.clone() if ptr in seen else value
        seen.add(ptr)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        save_file(flat, tmp, metadata=dict({"format": "pt", "producer": "glip_d2"}, **meta))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


def convert_checkpoint(
    src: str, dst: str, config_file: Optional[str] = None, trust_pickle: bool = False
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

    Returns:
        the report: "source", "prefix", "ignored", "unmapped", "num_tensors", "kept" (the
        input's ``__author__`` / ``matching_heuristics`` entries written with the output), and
        with a config "missing" / "unexpected".

    Raises:
        ValueError: when the checkpoint is another GLIP variant than the config, provides
            under half of its model's parameters or has a tensor of another shape than it;
            when ``dst`` has an unsupported extension, or a ``.safetensors`` ``dst`` cannot
            keep the input's entries.
        FileNotFoundError, RuntimeError: when ``src`` cannot be read.
    """
    if not dst.endswith(_FORMATS):
        raise ValueError(f"Output {dst!r} must end with one of {_FORMATS}.")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("The output must not overwrite the input checkpoint.")
    ckpt = read_checkpoint(src, trust_pickle=trust_pickle)
    sd, report = to_glip_d2_state_dict(ckpt["model"])
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{src}: the state dict holds non-tensor values, e.g. {bad[0]!r}.")
    report["num_tensors"] = len(sd)
    # official GLIP names were converted to glip_d2's: nothing left for name matching to do
    kept = {} if report["source"] == "official" else {k: ckpt[k] for k in _CARRIED if k in ckpt}
    if dst.endswith(".safetensors"):
        _safetensors_metadata(kept)  # refuse before any check or write
    report["kept"] = kept
    if config_file:
        from detectron2.config import get_cfg

        from ..config import add_glip_config

        cfg = get_cfg()
        add_glip_config(cfg)
        cfg.merge_from_file(config_file)
        report.update(compare_with_model(build_model_skeleton(cfg), sd, kept))
    save_state_dict(sd, dst, kept)
    return report


def format_report(report: Dict, src: str, dst: str) -> str:
    """Human-readable summary of a conversion report."""
    lines = [
        f"{src} ({'official GLIP' if report['source'] == 'official' else 'glip_d2'} names"
        f"{', prefix ' + repr(report['prefix']) + ' removed' if report['prefix'] else ''}) -> "
        f"{dst}: {report['num_tensors']} tensors."
    ]
    if report.get("kept"):
        lines.append(
            "Kept from the input: "
            + ", ".join(f"{k}={v!r}" for k, v in report["kept"].items())
            + (" (loads with Detectron2's name matching)"
               if report["kept"].get("matching_heuristics") else "")
        )
    lines.append(f"Ignored official keys: {len(report['ignored'])}")
    lines += [f"  {k}: {reason}" for k, reason in report["ignored"]]
    lines.append(f"Unmapped official keys (no rule, dropped): {len(report['unmapped'])}")
    lines += [f"  {k}" for k in report["unmapped"]]
    for name in ("missing", "unexpected"):
        if name in report:
            lines.append(f"Keys {name} with respect to the config's model: {len(report[name])}")
            lines += [f"  {k}" for k in report[name]]
    return "\n".join(lines)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m glip_d2.checkpoint.convert",
        description="Convert an official GLIP checkpoint to glip_d2 names (.pth or .safetensors).",
    )
    parser.add_argument(
        "input", help="official GLIP (or glip_d2) checkpoint: .pth, .safetensors or model-zoo .pkl"
    )
    parser.add_argument(
        "output",
        help="output file, .pth ({'model': state_dict}, plus the input's __author__ / "
        "matching_heuristics) or .safetensors (those two as metadata)",
    )
    parser.add_argument("--config", help="glip_d2 config the checkpoint must fit (checked first)")
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
        report = convert_checkpoint(args.input, args.output, args.config, args.trust_pickle)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(report, args.input, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
