"""Fail early, with a useful message, when a config names datasets that are not present."""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog


def check_datasets_present(names):
    """Raise FileNotFoundError naming each missing dataset and where its files should be."""
    root = os.getenv("DETECTRON2_DATASETS", "datasets")
    problems = []
    for name in names:
        if name not in DatasetCatalog.list():
            problems.append(f"  {name}: not registered (no glip_d2 or Detectron2 builtin of that name)")
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
