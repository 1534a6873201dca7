"""`add_two_stage_config(cfg)`: keys of the two-stage (language-aware R-CNN) models and of
RegionCLIP region-text pretraining (GLIP self-training takes command-line flags only).

The two-stage model also reads the keys `add_glip_config` adds: MODEL.LANGUAGE_BACKBONE.* (text
encoder), MODEL.DYHEAD.* (the fusion tower, when MODEL.LANGUAGE_ROI_HEADS.DEEP_FUSION is on),
MODEL.GLIP.VOCABULARY / TEST_CHUNK_SIZE (test vocabulary), MODEL.GLIP.TUNING / FREEZE_BACKBONE
(what trains), MODEL.ATSS.* and MODEL.GLIP.INFERENCE_BATCH (GLIP's head as the RPN,
GLIPATSSProposalGenerator) and INPUT.GROUNDING.* (prompts).
"""

from detectron2.config import CfgNode as CN


def add_two_stage_config(cfg):
    """Add the two-stage and RegionCLIP keys to a Detectron2 config, in place. Idempotent."""
    _C = cfg
    if "LANGUAGE_ROI_HEADS" in _C.MODEL:
        return cfg

    # ---------------------------------------------------------------- language-aware ROI heads
    _C.MODEL.LANGUAGE_ROI_HEADS = CN()
    # Classification loss: "focal" or "bce" (sigmoid per token, GLIP style) or "softmax" (over
    # the phrases/classes of the batch + a learned background embedding, RegionCLIP/Detic style).
    _C.MODEL.LANGUAGE_ROI_HEADS.CLS_LOSS = "focal"
    # Width of the region embedding the box head's output is projected to before scoring.
    _C.MODEL.LANGUAGE_ROI_HEADS.EMBED_DIM = 256
    # Initial foreground probability of a region-token pair (sets the scorer's bias0).
    _C.MODEL.LANGUAGE_ROI_HEADS.PRIOR_PROB = 0.01
    # Initial log temperature of the region-word dot product.
    _C.MODEL.LANGUAGE_ROI_HEADS.LOG_SCALE = 0.0
    # Focal loss alpha (CLS_LOSS "focal").
    _C.MODEL.LANGUAGE_ROI_HEADS.FOCAL_ALPHA = 0.25
    # Focal loss gamma (CLS_LOSS "focal").
    _C.MODEL.LANGUAGE_ROI_HEADS.FOCAL_GAMMA = 2.0
    # Weight of the classification (region-text) loss.
    _C.MODEL.LANGUAGE_ROI_HEADS.CLS_LOSS_WEIGHT = 1.0
    # Token -> label score aggregation for the sigmoid losses: "MEAN" (official GLIP), "MAX", "MIN"
    # (a name is as present as its least-present word) or "GEO_MEAN".
    _C.MODEL.LANGUAGE_ROI_HEADS.SCORE_AGG = "MEAN"
    # Clamp region-word logits to +-50000 (fp16 safety).
    _C.MODEL.LANGUAGE_ROI_HEADS.CLAMP_DOT_PRODUCT = True
    # Two-stage GLIP: run the VL-DyHead tower (MODEL.DYHEAD.*) on the FPN features, conditioned on
    # the prompt, before the RPN and the ROI heads (needs DYHEAD.CHANNELS == FPN.OUT_CHANNELS).
    _C.MODEL.LANGUAGE_ROI_HEADS.DEEP_FUSION = False
    # Backbone outputs the tower fuses, consecutive stride-2 levels; [] = all of them.
    _C.MODEL.LANGUAGE_ROI_HEADS.FUSION_IN_FEATURES = []

    # ---------------------------------------------------------------- RegionCLIP pretraining
    _C.MODEL.REGIONCLIP = CN()
    # Local directory of the Hugging Face CLIPModel teacher (config.json + weights).
    _C.MODEL.REGIONCLIP.TEACHER_PATH = ""
    # Teacher region features from "crops" (image crops resized to the CLIP input size) or
    # "roi_align" (RoIAlign on the teacher's patch-token grid, RegionCLIP's cheaper variant).
    _C.MODEL.REGIONCLIP.TEACHER_REGION_INPUT = "crops"
    # Concept pool file (one noun phrase per line; blank lines and lines starting with "#" are
    # skipped); "" = noun phrases of DATASETS.TRAIN captions.
    _C.MODEL.REGIONCLIP.CONCEPT_FILE = ""
    # Concepts kept (0 = all): the most frequent ones mined from the captions, or the first ones
    # of a CONCEPT_FILE.
    _C.MODEL.REGIONCLIP.MAX_CONCEPTS = 0
    # Noun phrases that mine the pool from captions (glip_d2.nlp): "auto" (spaCy when it and its
    # model are installed, else the simple split), "spacy" or "simple". The two give different
    # pools: a run whose processes mine different pools is refused; a fixed backend (or a
    # CONCEPT_FILE) makes the pool, and so the classes, the same on every machine. Unused with a
    # CONCEPT_FILE.
    _C.MODEL.REGIONCLIP.NOUN_PHRASES = "auto"
    # RPN proposals per image that get a pseudo concept label.
    _C.MODEL.REGIONCLIP.PROPOSALS_PER_IMAGE = 32
    # Temperature of the student's region-concept contrastive logits.
    _C.MODEL.REGIONCLIP.TEMPERATURE = 0.01
    # Temperature of the teacher and student distributions in the distillation KL.
    _C.MODEL.REGIONCLIP.DISTILL_TEMPERATURE = 0.01
    # Weight of the contrastive (pseudo-label cross-entropy) region-concept loss.
    _C.MODEL.REGIONCLIP.CONTRASTIVE_WEIGHT = 1.0
    # Weight of the KL distillation of the teacher's region-concept distribution.
    _C.MODEL.REGIONCLIP.DISTILL_WEIGHT = 1.0
    # Weight of RegionCLIP's image-level contrastive loss between the student's whole-image
    # embedding and the teacher's caption embedding, over the captioned images of the batch
    # (0 = off; a batch without captions has no such loss, or 0 with several processes).
    _C.MODEL.REGIONCLIP.IMAGE_TEXT_WEIGHT = 1.0
    # Temperature of the image-caption contrastive logits.
    _C.MODEL.REGIONCLIP.IMAGE_TEXT_TEMPERATURE = 0.01
    return cfg
