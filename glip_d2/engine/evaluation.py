"""Evaluator choice by dataset metadata, and per-dataset test vocabularies.

=================  =========================================================================
evaluator_type     evaluator
=================  =========================================================================
``coco``           Detectron2's COCOEvaluator (COCO, Objects365, custom jsons)
``odinw``          COCOEvaluator per dataset; ``odinw_suite_summary`` averages a suite
``lvis``           Detectron2's LVISEvaluator (``TEST.BENCHMARK.LVIS_MAX_DETS_PER_IMAGE``), plus
                   FixedAP when ``TEST.BENCHMARK.LVIS_FIXED_AP``
``flickr``         Recall@k, any-box and merged-box protocols (per phrase type with the
                   Flickr30k Entities release)
``grounding``      the same recall on any grounding dataset
``refcoco``        Acc@k of the referred box
=================  =========================================================================
"""

import logging
import os

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators

from ..config import add_dataset_config
from ..data.register import GROUNDING_EVALUATOR_TYPES, ensure_class_metadata
from ..text import apply_descriptions
from ..evaluation import (FixedAPEvaluator, FlickrEvaluator, RefExpEvaluator, StandardLVISEvaluator,
                          check_lvis_cap, check_refcoco_match)
from ..evaluation.ground_truth import (check_coco_ground_truth, check_ground_truth_file,
                                       with_annotation_ids)


logger = logging.getLogger(__name__)


def fast_coco_eval_available() -> bool:
    """Whether Detectron2's compiled extension has the fast COCO evaluator's ops.

    COCOEvaluator falls back to pycocotools by itself only when ``detectron2._C`` fails to
    import. A Detectron2 unpacked without its compiled ops behind a stand-in module (as on a
    machine whose Python the extension was not built for) imports fine and fails at the first
    image of the evaluation; this checks that the fast evaluator's class is a real compiled one.
    """
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return isinstance(getattr(_C, "InstanceAnnotation", None), type)


def _coco_evaluator(dataset_name: str, **kwargs) -> COCOEvaluator:
    """Detectron2's COCOEvaluator, with its fast compiled AP only where the ops are there."""
    fast = fast_coco_eval_available()
    if not fast:
        logger.info("detectron2._C has no compiled COCO evaluation ops: %s is scored with "
                    "pycocotools' COCOeval (same AP, slower).", dataset_name)
    json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
    evaluator = with_annotation_ids(
        lambda: COCOEvaluator(dataset_name, use_fast_impl=fast, **kwargs), json_file
    )
    api = getattr(evaluator, "_coco_api", None)
    if json_file and api is not None:  # a json's ground truth, checked before any inference
        check_coco_ground_truth(api.dataset, json_file)
    _score_vocabulary_only(evaluator, dataset_name)
    _boxes_only_without_masks(evaluator, dataset_name)
    return evaluator


def _boxes_only_without_masks(evaluator: COCOEvaluator, dataset_name: str) -> None:
    """Score boxes only on a json without segmentations (ODinW, Objects365, a detection set).

    COCOEvaluator adds "segm" whenever the predictions carry masks (a MODEL.MASK_ON model),
    and pycocotools then fails (KeyError 'segmentation') after the whole inference has run.
    """
    api = getattr(evaluator, "_coco_api", None)
    annotations = api.dataset.get("annotations", []) if api is not None else []
    has_masks = any("segmentation" in a for a in annotations)
    if evaluator._tasks is None and annotations and not has_masks:
        logger.info(f"{dataset_name}: the json has no segmentations; only boxes are scored.")
        evaluator._tasks = ("bbox",)


def _score_vocabulary_only(evaluator: COCOEvaluator, dataset_name: str) -> None:
    """Leave the json's categories that the dataset's vocabulary does not name out of COCOeval.

    A registration may skip categories of its json (a raw Roboflow export's background entry 0,
    which ODinW leaves out; the loader refuses annotations of a skipped category). COCOeval
    scores every category of the json, and COCOEvaluator then fails (AssertionError) matching
    the per-category APs to ``thing_classes``.
    """
    id_map = MetadataCatalog.get(dataset_name).get("thing_dataset_id_to_contiguous_id", None)
    api = getattr(evaluator, "_coco_api", None)
    if not id_map or api is None:
        return
    categories = api.dataset.get("categories", [])
    dropped = sorted(c["id"] for c in categories if c["id"] not in id_map)
    if dropped:
        logger.info(f"{dataset_name}: json categories {dropped} are not in the vocabulary; AP "
                    "is over the others.")
        api.dataset["categories"] = [c for c in categories if c["id"] in id_map]
        api.cats = {c["id"]: c for c in api.dataset["categories"]}


def _benchmark_options(cfg) -> CfgNode:
    """``cfg.TEST.BENCHMARK``, or its defaults for a config built without add_dataset_config."""
    if "BENCHMARK" in cfg.TEST:
        return cfg.TEST.BENCHMARK
    return add_dataset_config(CfgNode({"DATASETS": CfgNode(), "TEST": CfgNode()})).TEST.BENCHMARK


def _coco_max_dets(opts) -> int:
    max_dets = opts.COCO_MAX_DETS_PER_IMAGE
    if not isinstance(max_dets, int) or max_dets < 1:
        raise ValueError(f"TEST.BENCHMARK.COCO_MAX_DETS_PER_IMAGE must be a positive integer "
                         f"(COCO's standard is 100); got {max_dets!r}.")
    return max_dets


def check_benchmark_options(cfg) -> None:
    """The ``TEST.BENCHMARK`` values the evaluators check, checked before training: evaluators
    are built at the first evaluation, after the whole training when ``TEST.EVAL_PERIOD`` is 0.

    Raises:
        ValueError: naming the key, as the evaluator would.
    """
    opts = _benchmark_options(cfg)
    _coco_max_dets(opts)
    check_lvis_cap(opts.LVIS_MAX_DETS_PER_IMAGE)
    check_refcoco_match(opts.get("REFCOCO_MATCH", "giou"))


# Test jsons this process has checked, by (path, size, modification time): train_net checks
# before launching its processes and again in the main one, which is the same process for one GPU.
_CHECKED_GROUND_TRUTH = set()


def check_test_ground_truth(cfg) -> None:
    """The ground truth of each COCO / LVIS json in ``DATASETS.TEST`` (``evaluator_type``
    "coco", "odinw" or "lvis"), checked as its evaluator will check it
    (:func:`glip_d2.evaluation.ground_truth.check_ground_truth_file`). Evaluators are built at
    the first evaluation, after the whole training when ``TEST.EVAL_PERIOD`` is 0, and one after
    another, each after the previous test set's inference; their errors come before the model
    is built instead. Datasets that are not registered, or whose json is not there, are left to
    ``check_datasets_present`` and the loaders.

    Raises:
        ValueError: naming the json and the record, as the evaluator would.
    """
    from detectron2.utils import comm

    if not comm.is_main_process():  # checked before launch and on the main process: not N times
        return
    for name in cfg.DATASETS.TEST:
        if name not in DatasetCatalog.list():
            continue
        meta = MetadataCatalog.get(name)
        kind = meta.get("evaluator_type", "coco")
        json_file = meta.get("json_file", None)
        if kind not in ("coco", "odinw", "lvis") or not json_file or not os.path.isfile(json_file):
            continue
        stat = os.stat(json_file)
        key = (os.path.abspath(json_file), stat.st_size, stat.st_mtime_ns)
        if key in _CHECKED_GROUND_TRUTH:
            continue
        try:
            check_ground_truth_file(json_file, "lvis" if kind == "lvis" else "coco")
        except ValueError as e:
            raise ValueError(f"DATASETS.TEST {name!r} ({kind} evaluation): {e}") from e
        _CHECKED_GROUND_TRUTH.add(key)


def build_glip_evaluator(cfg, dataset_name: str, output_folder=None):
    """The evaluator of a dataset, chosen by its ``evaluator_type`` (table in the module doc).

    Args:
        cfg: the config (``TEST.BENCHMARK``).
        dataset_name: a registered dataset.
        output_folder: where evaluators write their files; default
            ``OUTPUT_DIR/inference/<dataset_name>``.

    Raises:
        NotImplementedError: for an evaluator_type not in the table.
    """
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    ensure_class_metadata(dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    kind = meta.get("evaluator_type", "coco")
    opts = _benchmark_options(cfg)
    if kind in ("coco", "odinw"):
        # COCO's standard maxDets, not the model's cap (MODEL.ATSS.DETECTIONS_PER_IMG 300 scored
        # AP at 300 detections, a number no paper reports)
        max_dets = _coco_max_dets(opts)
        return _coco_evaluator(dataset_name, output_dir=output_folder, max_dets_per_image=max_dets)
    if kind == "lvis":
        evaluators = [
            StandardLVISEvaluator(
                dataset_name,
                output_dir=output_folder,
                max_dets_per_image=opts.LVIS_MAX_DETS_PER_IMAGE,
            )
        ]
        if opts.LVIS_FIXED_AP:
            evaluators.append(
                FixedAPEvaluator(
                    dataset_name,
                    max_dets_per_category=opts.FIXED_AP_DETS_PER_CATEGORY,
                    output_dir=output_folder,
                )
            )
        return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
    if kind in ("flickr", "grounding"):
        entities = None
        if kind == "flickr":
            entities = opts.FLICKR_ENTITIES_DIR or meta.get("flickr_entities_dir", None)
        return FlickrEvaluator(
            dataset_name,
            topk=opts.GROUNDING_TOPK,
            iou_thresh=opts.GROUNDING_IOU_THRESH,
            entities_dir=entities,
            task=kind,
        )
    if kind == "refcoco":
        return RefExpEvaluator(
            dataset_name, topk=opts.GROUNDING_TOPK, iou_thresh=opts.GROUNDING_IOU_THRESH,
            match=opts.get("REFCOCO_MATCH", "giou"),
        )
    raise NotImplementedError(
        f"No evaluator for dataset {dataset_name!r} with evaluator_type {kind!r}; glip_d2 "
        "evaluates 'coco', 'odinw', 'lvis', 'flickr', 'grounding' and 'refcoco' datasets."
    )


def set_test_vocabulary(model, dataset_name: str, descriptions=None):
    """Detect the dataset's own class names (unless MODEL.GLIP.VOCABULARY fixes one).

    Grounding datasets (Flickr30k, RefCOCO, ...) need no vocabulary: each input carries its
    caption and phrases. Datasets registered lazily record their names when first loaded, so
    the dataset is loaded here if its metadata has no ``thing_classes`` yet. ``descriptions``
    (a list per class or a mapping name -> description, DATASETS.CLASS_DESCRIPTIONS) turn the
    names into class descriptions.

    Raises:
        ValueError: when the names cannot be a prompt (repeated, empty after cleaning, longer
            than the token limit), naming the dataset and its json.
    """
    meta = MetadataCatalog.get(dataset_name)
    if meta.get("evaluator_type", None) in GROUNDING_EVALUATOR_TYPES:
        return
    ensure_class_metadata(dataset_name)
    names = meta.get("thing_classes", None)
    if names is None:
        raise ValueError(f"Dataset {dataset_name!r} has no thing_classes to build a prompt from")
    try:
        getattr(model, "module", model).set_vocabulary(apply_descriptions(names, descriptions))
    except ValueError as e:
        raise _vocabulary_error(dataset_name, e) from e


def prompt_test_dataset(cfg, model, dataset_name: str) -> None:
    """Before a dataset is evaluated: a fixed MODEL.GLIP.VOCABULARY is checked against its class
    list (:func:`check_fixed_vocabulary`); otherwise the model is prompted with its class names
    and DATASETS.CLASS_DESCRIPTIONS (:func:`set_test_vocabulary`). A subset view of a dataset
    (``subset_of`` in its metadata, e.g. data_efficiency's ``--max-test-images``) is described
    like the dataset it is a view of. For the first of DATASETS.TEST, the class names of the
    others are checked as prompts too, so that a bad name in the last of several test datasets
    (ODinW) fails now, not after the inference on the others."""
    if len(cfg.MODEL.GLIP.VOCABULARY):
        check_fixed_vocabulary(cfg.MODEL.GLIP.VOCABULARY, dataset_name)
        return
    from ..data.class_descriptions import class_descriptions_from_config

    descriptions = class_descriptions_from_config(cfg)

    def described(name):
        source = MetadataCatalog.get(name).get("subset_of", name)
        return descriptions.get(name, descriptions.get(source))

    set_test_vocabulary(model, dataset_name, described(dataset_name))
    if list(cfg.DATASETS.TEST[:1]) == [dataset_name]:
        for name in cfg.DATASETS.TEST[1:]:
            _check_test_vocabulary(model, name, described(name))


def _vocabulary_error(dataset_name: str, error: ValueError) -> ValueError:
    """The vocabulary's message names indices of a list the user never wrote: say whose it is."""
    json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
    source = f" (categories of {json_file})" if json_file else ""
    return ValueError(
        f"The class names of test dataset {dataset_name!r}{source} cannot be its prompt: {error} "
        "Name # is the class's position in category id order; rename the categories (or "
        "leave the dataset out of DATASETS.TEST)."
    )


def _check_test_vocabulary(model, dataset_name: str, descriptions=None) -> None:
    """Chunk a test dataset's class names as :func:`set_test_vocabulary` would, without
    prompting the model with them (nothing is encoded)."""
    inner = getattr(model, "module", model)
    meta = MetadataCatalog.get(dataset_name)
    if meta.get("evaluator_type", None) in GROUNDING_EVALUATOR_TYPES:
        return
    if not hasattr(inner, "chunk_names"):
        return
    ensure_class_metadata(dataset_name)
    names = meta.get("thing_classes", None)
    if names is None:
        return
    try:
        inner.chunk_names(apply_descriptions(names, descriptions))
    except ValueError as e:
        raise _vocabulary_error(dataset_name, e) from e


def check_fixed_vocabulary(vocabulary, dataset_name: str) -> None:
    """A fixed MODEL.GLIP.VOCABULARY must name the dataset's classes in its order: the evaluator
    reads each predicted label as the dataset's class index, so another order or subset would be
    scored against the wrong classes without any error.

    Raises:
        ValueError: when the detection dataset's ``thing_classes`` differ from ``vocabulary``.
    """
    meta = MetadataCatalog.get(dataset_name)
    if meta.get("evaluator_type", None) in GROUNDING_EVALUATOR_TYPES:
        return
    ensure_class_metadata(dataset_name)
    names = meta.get("thing_classes", None)
    if names is not None and list(names) != list(vocabulary):
        differ = next((i for i, (a, b) in enumerate(zip(names, vocabulary)) if a != b),
                      min(len(names), len(vocabulary)))
        raise ValueError(
            f"MODEL.GLIP.VOCABULARY ({len(vocabulary)} names) is not the class list of {dataset_name!r} "
            f"({len(names)} names; first difference at index {differ}), and the evaluator reads each "
            "predicted label as the dataset's class index. Leave MODEL.GLIP.VOCABULARY empty to "
            "prompt with the dataset's own names (DATASETS.CLASS_DESCRIPTIONS adds descriptions)."
        )

