"""Fail early, with a useful message, when a config names datasets that are not present."""
import os
from typing import Optional

from detectron2.data import DatasetCatalog, MetadataCatalog


def _glip_d2_json(name: str, root: str) -> Optional[str]:
    """The annotation file whose presence registers a glip_d2 builtin of this name (LVIS)."""
    from glip_d2.data.datasets.lvis import LVIS_FILES

    return os.path.join(root, LVIS_FILES[name][0]) if name in LVIS_FILES else None


def check_datasets_present(names):
    """Raise FileNotFoundError naming each missing dataset and where its files should be."""
    root = os.getenv("DETECTRON2_DATASETS", "datasets")
    problems = []
    for name in names:
        if name not in DatasetCatalog.list():
            json_file = _glip_d2_json(name, root)
            if json_file:  # glip_d2 registers its benchmark datasets only when their files exist
                problems.append(f"  {name}: not registered: glip_d2 registers it when {json_file} "
                                "exists, which it does not")
            else:
                problems.append(f"  {name}: not registered (not a Detectron2 builtin; glip_d2's "
                                "benchmark names register when their files are present)")
            continue
        meta = MetadataCatalog.get(name)
        for key in ("json_file", "image_root"):
            path = meta.get(key, None)
            if path and not os.path.exists(path) and not meta.get("generated_on_demand", False):
                problems.append(f"  {name}: {key} {path} does not exist")
    if problems:
        raise FileNotFoundError(
            "Datasets named by the config are not available:\n" + "\n".join(problems) +
            f"\nPut them under the DETECTRON2_DATASETS root (now {os.path.abspath(root)!r}) as "
            "datasets/README.md describes, set DETECTRON2_DATASETS, or override DATASETS.TRAIN/TEST."
        )
