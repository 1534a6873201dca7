"""Pseudo-labels of a finished self-training run (:mod:`glip_d2.selftrain.pseudo_label`) as a
grounding dataset: the names of the run's merged files and :func:`register_pseudo_labels`.

The data side only reads what the run wrote, so it depends on nothing of ``glip_d2.selftrain``
(which writes these files and imports the names from here).
"""

import json
import os
from typing import Optional

from ..register import register_grounding_instances
from .odvg import register_odvg

__all__ = ["FINAL_JSON", "FINAL_ODVG", "SUMMARY_JSON", "register_pseudo_labels"]

# The merged outputs of a run, under its output directory.
FINAL_JSON = "pseudo_labels.json"  # MDETR-style grounding json (--format mdetr / both)
FINAL_ODVG = "pseudo_labels.odvg.jsonl"  # ODVG grounding lines (--format odvg / both)
SUMMARY_JSON = "summary.json"  # image_root and counts of the merged output


def register_pseudo_labels(name: str, output_dir: str, image_root: Optional[str] = None) -> str:
    """Register the merged pseudo-labels of `output_dir` as grounding dataset `name`.

    The MDETR json is used when the run wrote one, else the ODVG file.

    Args:
        name: the new dataset name (e.g. "cc3m_pseudo_train").
        output_dir: the --output-dir of the finished run.
        image_root: image folder; None = the one the run recorded.

    Returns:
        the annotation file registered.

    Raises:
        FileNotFoundError: when the run has not written its merged output yet.
    """
    summary_file = os.path.join(output_dir, SUMMARY_JSON)
    files = [os.path.join(output_dir, f) for f in (FINAL_JSON, FINAL_ODVG)]
    existing = [f for f in files if os.path.isfile(f)]
    if not existing:
        raise FileNotFoundError(
            f"Neither {files[0]} nor {files[1]} exists: pseudo-labelling has not finished every "
            "shard yet (run the missing shards, or --finalize-only)."
        )
    if image_root is None:
        if os.path.isfile(summary_file):
            with open(summary_file, encoding="utf-8") as f:
                image_root = json.load(f).get("image_root") or ""
        else:  # runs from before summary.json: the MDETR json records it
            with open(files[0], encoding="utf-8") as f:
                image_root = json.load(f)["info"].get("image_root") or ""
    metadata = {"pseudo_labels": True}
    if existing[0] == files[0]:
        register_grounding_instances(name, existing[0], image_root, metadata=metadata)
    else:
        register_odvg(name, existing[0], image_root, metadata=metadata)
    return existing[0]
