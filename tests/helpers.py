"""Small configs and inputs shared by the model tests."""
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances

from glip_d2 import add_glip_config


def tiny_cfg(fuse: bool = True):
    """A GLIP small enough to train a step in about a second on CPU."""
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file("configs/demo_glip_tiny_shapes.yaml")
    cfg.MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED = False
    cfg.MODEL.LANGUAGE_BACKBONE.NUM_HIDDEN_LAYERS = 1
    cfg.MODEL.LANGUAGE_BACKBONE.FREEZE = True  # its 30522-row embedding table dominates step time
    cfg.MODEL.SWIN.DEPTHS = [1, 1, 1, 1]
    # the official head's parameters (the demo's box-pooled read-out has no official key)
    cfg.MODEL.ATSS.REGION_CONTEXT_CONVS = 0
    cfg.MODEL.ATSS.REGION_POOL = 0
    cfg.MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON = fuse
    cfg.MODEL.DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT = fuse
    cfg.MODEL.DYHEAD.FUSE_CONFIG.DROPOUT = 0.0
    cfg.MODEL.GLIP.VOCABULARY = ["red circle", "blue square", "green triangle"]
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    return cfg


def model_with_losses(**losses):
    """A tiny GLIP in train mode, seeded, with MODEL.GLIP.LOSSES keys set (e.g. MLM_WEIGHT=1.0)."""
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    cfg = tiny_cfg()
    for k, v in losses.items():
        setattr(cfg.MODEL.GLIP.LOSSES, k, v)
    return build_model(cfg).train()


def make_input(model, caption, boxes, spans, size=(160, 192), seed=0):
    """One training input: random image, boxes (xyxy) each named by one char span of caption."""
    from glip_d2.text import create_positive_map, tokenize

    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 255, (3, *size), generator=g, dtype=torch.uint8)
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.arange(len(boxes), dtype=torch.long)
    tok = tokenize(model.tokenizer, [caption], max_length=model.max_query_len, pad_to_max=True)
    inst.gt_positive_map = create_positive_map(tok, [[s] for s in spans], max_len=model.max_query_len) if spans else torch.zeros(0, model.max_query_len, dtype=torch.bool)
    return {"image": image, "height": size[0], "width": size[1], "caption": caption, "instances": inst}


def no_text_encoder(*args, **kwargs):
    """A text encoder's forward for tests in which it must not run."""
    raise AssertionError("the text encoder ran")


def assert_tuned_prompt_reloads(cfg, path, image, expected):
    """A model built from ``cfg`` and the prompt-tuned checkpoint at ``path`` gives ``expected``
    (Instances) on ``image`` without running its text encoder. Returns that model."""
    from detectron2.modeling import build_model

    from glip_d2.checkpoint import GLIPCheckpointer

    reloaded = build_model(cfg).eval()
    GLIPCheckpointer(reloaded).load(path)
    reloaded.language_backbone.forward = no_text_encoder
    with torch.no_grad():
        got = reloaded([image])[0]["instances"]
    assert len(got) > 0
    torch.testing.assert_close(got.scores, expected.scores)
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor)
    return reloaded, got


def save_tiny_clip(folder: str, words) -> str:
    """Save a tiny random CLIPModel (ViT 32 px, patch 8; 1 layer, width 32, projection 16) with
    a word-level tokenizer of `words` (+ "a photo of .") to `folder`, as CLIP releases are laid
    out (``CLIPModel.save_pretrained`` + its tokenizer); returns `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    names = dict.fromkeys(["[UNK]", *sorted(words), "a", "photo", "of", ".", "<bos>", "<eos>"])
    vocab = {w: i for i, w in enumerate(names)}
    n = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", n - 2), ("<eos>", n - 1)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", bos_token="<bos>", eos_token="<eos>",
        pad_token="<eos>",
    ).save_pretrained(folder)
    layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(layers, vocab_size=n, max_position_embeddings=77, bos_token_id=n - 2,
                         eos_token_id=n - 1, pad_token_id=n - 1),
        vision_config=dict(layers, image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    return folder
