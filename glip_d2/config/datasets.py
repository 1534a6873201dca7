"""`add_dataset_config(cfg)`: the config keys of glip_d2's datasets and benchmark evaluators.

Called by :func:`glip_d2.add_glip_config`; safe to call again (idempotent).
"""

from detectron2.config import CfgNode as CN


def add_dataset_config(cfg):
    """Add the dataset and benchmark keys to a Detectron2 config, in place. Idempotent."""
    _C = cfg
    if "BENCHMARK" in _C.TEST:
        return cfg

    # COCO-format jsons registered as detection-as-grounding by register_datasets_from_config:
    # [[name, json_file, image_root], ...]; a 4th field "lvis" = an LVIS-format json with its own
    # vocabulary, evaluated with the LVIS protocol; relative paths are under $DETECTRON2_DATASETS.
    _C.DATASETS.CUSTOM = []
    # Pseudo-label runs (python -m glip_d2.pseudo_label) registered as grounding datasets:
    # [[name, output_dir], ...]; relative output_dirs are relative to the working directory.
    _C.DATASETS.PSEUDO_LABELS = []
    # Image-caption collections (jsonl/CSV: file name + caption) registered as box-free caption
    # datasets, e.g. for RegionCLIP pretraining: [[name, collection_file, image_root], ...];
    # relative paths are under $DETECTRON2_DATASETS.
    _C.DATASETS.CAPTIONS = []
    # Relative sampling probability of each DATASETS.TRAIN entry (one per entry, e.g. (1, 1) to
    # draw human-labelled and pseudo-labelled data equally often whatever their sizes);
    # () = plain concatenation, images drawn in proportion to the dataset sizes. Within a dataset
    # images are uniform, or by category repeat factors with DATALOADER.SAMPLER_TRAIN
    # RepeatFactorTrainingSampler (Detectron2's Weighted*TrainingSampler: use these ratios).
    _C.DATASETS.TRAIN_RATIOS = ()
    # Checks of the training records when first loaded (glip_d2/data/validate.py): "full" (files
    # exist, json sizes match the image headers, spans map to tokens, category names tokenize,
    # a detection dataset has some box), "quick" (all but reading image headers), "none".
    _C.DATASETS.CHECK_RECORDS = "full"
    # Drop and count bad training records (at load or when mapped) instead of stopping with an
    # error that names the record. Errors of the json itself (a malformed box, an unknown
    # category id) stop registration whatever this says.
    _C.DATASETS.SKIP_BAD_RECORDS = False

    # Class descriptions per dataset (official DATASETS.CAPTION_PROMPT): [[dataset_name, source],
    # ...], source = a .json/.yaml file or inline JSON, either a list with one entry per class in
    # label order (a name or {"prefix", "name", "suffix"}) or a mapping class name ->
    # {"prefix", "suffix"}; the prompt reads prefix + name + suffix, only the name's tokens are
    # the class's positive tokens. Used by training prompts and the test vocabulary.
    _C.DATASETS.CLASS_DESCRIPTIONS = []
    # k-shot training (ODinW protocol, glip_d2/data/few_shot.py): each detection dataset of
    # DATASETS.TRAIN is cut to a k-shot subset of its images; 0 = off.
    _C.DATASETS.FEW_SHOT = 0
    # Seed of the few-shot draw (the same seed gives the same images; ODinW uses 0, 1, 2).
    _C.DATASETS.FEW_SHOT_SEED = 0
    # What k counts: "official" (GLIP's: k images per category, seed 0 = image-id order) or
    # "instances" (k annotated instances per category, always seeded; the shapes demo's tables).
    _C.DATASETS.FEW_SHOT_MODE = "official"

    _C.TEST.BENCHMARK = CN()
    # COCOeval's maxDets for COCO-format data (COCO, ODinW, custom): AP at this many detections
    # per image (and category), whatever the model's own cap. 100 is COCO's standard, which
    # official GLIP reports; Detectron2's COCOEvaluator adds [1, 10] for the AR columns.
    _C.TEST.BENCHMARK.COCO_MAX_DETS_PER_IMAGE = 100
    # Per-image cap of the standard LVIS AP (LVISEvaluator); the LVIS protocol uses 300.
    _C.TEST.BENCHMARK.LVIS_MAX_DETS_PER_IMAGE = 300
    # Also report FixedAP (Dave et al. 2021: no per-image cap, top-k per category) on LVIS data.
    _C.TEST.BENCHMARK.LVIS_FIXED_AP = False
    # FixedAP: detections kept per category over the whole dataset.
    _C.TEST.BENCHMARK.FIXED_AP_DETS_PER_CATEGORY = 10000
    # The k of Recall@k (Flickr30k, grounding) and Acc@k (RefCOCO).
    _C.TEST.BENCHMARK.GROUNDING_TOPK = (1, 5, 10)
    # IoU at which a grounded box counts as correct.
    _C.TEST.BENCHMARK.GROUNDING_IOU_THRESH = 0.5
    # RefCOCO's overlap measure: "giou" (MDETR's and official GLIP's RefExp evaluator, behind
    # their reported numbers) or "iou" (the usual RefCOCO criterion; never lower).
    _C.TEST.BENCHMARK.REFCOCO_MATCH = "giou"
    # Flickr30k Entities folder (Annotations/, Sentences/) for MDETR's exact protocol and
    # per-type recall; "" = the one found at registration (<root>/flickr30k/flickr30k_entities).
    _C.TEST.BENCHMARK.FLICKR_ENTITIES_DIR = ""
    return cfg
