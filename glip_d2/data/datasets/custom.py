"""Any COCO-format json as a GLIP detection-as-grounding dataset: one call, or config only.

One call::

    from glip_d2.data.datasets import register_custom_coco
    register_custom_coco("my_train", "path/to/train.json", "path/to/images")

Config only (``DATASETS.CUSTOM``, registered by :func:`register_datasets_from_config`, which
``train_net.py`` calls in ``setup``)::

    DATASETS:
      CUSTOM: [["my_train", "my/train.json", "my/images"], ["my_val", "my/val.json", "my/images"]]
      TRAIN: ("my_train",)
      TEST: ("my_val",)

The category names become the prompt (training prompts with sampled negatives, as for
Objects365; evaluation prompts with all names), evaluation is Detectron2's COCOEvaluator.
"""

import os
from typing import List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from .coco_json import register_detection_json
from .pseudo_labels import register_pseudo_labels

__all__ = ["register_custom_coco", "register_custom_lvis", "register_datasets_from_config"]


def register_custom_coco(
    name: str,
    json_file: str,
    image_root: str,
    metadata: Optional[dict] = None,
    evaluator_type: str = "coco",
) -> None:
    """Register a COCO-format detection json as detection-as-grounding.

    The json is parsed (and validated, and cached) now, to record ``thing_classes``; images are
    not opened.

    Args:
        name: the new dataset name.
        json_file: COCO json with ``images``, ``annotations`` and ``categories``.
        image_root: folder the images' ``file_name`` are relative to.
        metadata: extra metadata (``thing_classes`` given here replace the json's names).
        evaluator_type: "coco" (AP with COCOEvaluator) or another type known to
            :func:`glip_d2.engine.build_glip_evaluator`.

    Raises:
        ValueError: if ``name`` is taken, or (``DatasetFormatError``) the json is malformed.
    """
    register_detection_json(
        name, json_file, image_root, metadata=metadata, evaluator_type=evaluator_type
    )


# Formats of a DATASETS.CUSTOM entry's optional 4th field.
_CUSTOM_FORMATS = ("coco", "lvis")


def register_custom_lvis(name: str, json_file: str, image_root: str) -> None:
    """Register an LVIS-format json with its own vocabulary (the json's category names), evaluated
    with the LVIS protocol (LVISEvaluator; FixedAP with TEST.BENCHMARK.LVIS_FIXED_AP).

    Unlike :func:`glip_d2.data.datasets.register_lvis` (LVIS v1's 1203 names), the categories
    come from the json. Image paths follow LVIS: ``file_name``, else the folder of ``coco_url``.

    Raises:
        ValueError: if ``name`` is taken, or (``DatasetFormatError``) the json is malformed.
    """
    from .lvis import _IMAGE_KEYS, lvis_file_name

    register_detection_json(
        name, json_file, image_root, evaluator_type="lvis", file_name_fn=lvis_file_name,
        image_extra_keys=_IMAGE_KEYS,
    )


def _check_entry(entry, key: str, fields) -> None:
    """A config list entry must be [field, ...]: that many non-empty strings."""
    if (
        not isinstance(entry, (list, tuple))
        or len(entry) != len(fields)
        or not all(isinstance(x, str) and x for x in entry)
    ):
        raise ValueError(
            f"{key} entry {entry!r} is not [{', '.join(fields)}] ({len(fields)} non-empty strings)."
        )


def _resolve(path: str, root: str) -> str:
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(root, path)


def _require_file(key: str, entry, given: str, root: str) -> str:
    """The resolved path of a config entry's data file, which must exist before the entry is
    registered (parsing would fail with a bare "No such file" deep inside the loader).

    Raises:
        FileNotFoundError: naming the entry, the path and the root relative paths are read from.
    """
    path = _resolve(given, root)
    if os.path.isfile(path):
        return path
    problem = "is not a file" if os.path.exists(path) else "does not exist"
    hint = ""
    if not os.path.isabs(os.path.expanduser(given)):
        hint = (
            " (relative paths are taken from the DETECTRON2_DATASETS root, now "
            f"{os.path.abspath(root)!r})"
        )
    raise FileNotFoundError(f"{key} entry {list(entry)!r}: {path!r} {problem}{hint}.")


def register_datasets_from_config(cfg, only: Optional[Sequence[str]] = None) -> List[str]:
    """Register the ``DATASETS.CUSTOM``, ``CAPTIONS`` and ``PSEUDO_LABELS`` entries (idempotent).

    A CUSTOM entry is ``[name, json_file, image_root]`` (COCO format, COCOEvaluator) or
    ``[name, json_file, image_root, "lvis"]`` (LVIS format with its own vocabulary, LVIS
    evaluation; "coco" is the default format); relative paths are relative to the
    ``$DETECTRON2_DATASETS`` root (default "datasets"), like every other dataset. A
    CAPTIONS entry is ``[name, collection_file, image_root]`` (jsonl/CSV image-caption pairs, same
    root rule); a PSEUDO_LABELS entry is ``[name, output_dir]`` of a finished
    ``glip_d2.selftrain.pseudo_label`` run.

    Args:
        cfg: a config with ``DATASETS.CUSTOM`` (see :func:`glip_d2.add_dataset_config`).
        only: register only the entries of these names (``train_net --eval-only`` passes
            DATASETS.TEST, so evaluating needs no training data); None = all. Every entry is
            still checked for its form.

    Returns:
        the names registered now (entries registered before with the same files and format are
        skipped).

    Raises:
        ValueError: on a malformed entry, or a name registered before with other files or
            another format.
        FileNotFoundError: when an entry's json or collection file does not exist.
    """
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    registered = []
    for entry in cfg.DATASETS.get("CUSTOM", []):
        fields = ("name", "json_file", "image_root") + (("format",) if len(entry) == 4 else ())
        _check_entry(entry, "DATASETS.CUSTOM", fields)
        if only is not None and entry[0] not in only:
            continue
        name, json_file, image_root = entry[0], _resolve(entry[1], root), _resolve(entry[2], root)
        fmt = entry[3] if len(entry) == 4 else "coco"
        if fmt not in _CUSTOM_FORMATS:
            raise ValueError(
                f"DATASETS.CUSTOM entry {list(entry)!r}: format must be one of {_CUSTOM_FORMATS}, "
                f"got {fmt!r}."
            )
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            # The format is the evaluator type ("coco" or "lvis") a CUSTOM entry registers with.
            known = (meta.get("json_file"), meta.get("image_root"), meta.get("evaluator_type"))
            if known == (json_file, image_root, fmt):
                continue
            raise ValueError(
                f"DATASETS.CUSTOM names {name!r}, which is already registered with "
                f"json_file={known[0]!r}, image_root={known[1]!r}, format {known[2]!r}; "
                "pick another name."
            )
        _require_file("DATASETS.CUSTOM", entry, entry[1], root)
        if fmt == "lvis":
            register_custom_lvis(name, json_file, image_root)
        else:
            register_custom_coco(name, json_file, image_root)
        registered.append(name)
    return (registered + _register_captions_from_config(cfg, root, only)
            + _register_pseudo_labels_from_config(cfg, only))


def _register_captions_from_config(cfg, root: str, only) -> List[str]:
    from .captions import register_caption_collection

    registered = []
    for entry in cfg.DATASETS.get("CAPTIONS", []):
        _check_entry(entry, "DATASETS.CAPTIONS", ("name", "collection_file", "image_root"))
        if only is not None and entry[0] not in only:
            continue
        name, path, image_root = entry[0], _resolve(entry[1], root), _resolve(entry[2], root)
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            if (meta.get("caption_file"), meta.get("image_root")) == (path, image_root):
                continue
            raise ValueError(
                f"DATASETS.CAPTIONS names {name!r}, which is already registered from "
                f"{meta.get('caption_file')!r}; pick another name."
            )
        _require_file("DATASETS.CAPTIONS", entry, entry[1], root)
        register_caption_collection(name, path, image_root)
        registered.append(name)
    return registered


def _register_pseudo_labels_from_config(cfg, only) -> List[str]:
    registered = []
    for entry in cfg.DATASETS.get("PSEUDO_LABELS", []):
        _check_entry(entry, "DATASETS.PSEUDO_LABELS", ("name", "output_dir"))
        if only is not None and entry[0] not in only:
            continue
        name, output_dir = entry[0], os.path.abspath(os.path.expanduser(entry[1]))
        if name in DatasetCatalog.list():
            known = MetadataCatalog.get(name).get("pseudo_label_dir")
            if known == output_dir:
                continue
            raise ValueError(
                f"DATASETS.PSEUDO_LABELS names {name!r}, which is already registered"
                + (f" from {known!r}" if known else " (not as pseudo-labels)")
                + "; pick another name."
            )
        register_pseudo_labels(name, output_dir)
        MetadataCatalog.get(name).set(pseudo_label_dir=output_dir)
        registered.append(name)
    return registered
