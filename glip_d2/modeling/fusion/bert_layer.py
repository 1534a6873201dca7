"""The text-side layer of each fused DyHead block: one BERT encoder layer with fp16 clamps."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .bi_attention import CLAMP_VALUE


class BertEncoderLayer(nn.Module):
    """Post-LN BERT layer (self-attention + GELU MLP) whose attention scores are clamped to
    +-50000 before the padding mask is applied, as in GLIP's own copy of `modeling_bert`.

    Why not HF's ``BertLayer``: with the clamp idle (fp32 scores inside +-50000) the two are
    bit-equal (eager attention; SDPA differs by ~1e-6), but the clamp sits between the scores and
    the mask, inside HF's self-attention, which has no hook there: transformers 4.x would need a
    subclass of its ``BertSelfAttention`` internals, 5.x a registered attention function, each
    tied to private code that changes between versions. Beyond 50000 (fp16-scale activations)
    the clamp changes the output. See ``tests/modeling/test_library_equivalence.py``.
    """

    def __init__(
        self,
        hidden_size: int = 768,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        dropout: float = 0.1,
        layer_norm_eps: float = 1e-12,
        clamp_min: bool = True,
        clamp_max: bool = True,
    ):
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size {hidden_size} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.clamp_min, self.clamp_max = clamp_min, clamp_max
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.attn_out = nn.Linear(hidden_size, hidden_size)
        self.attn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.ffn_in = nn.Linear(hidden_size, intermediate_size)
        self.ffn_out = nn.Linear(intermediate_size, hidden_size)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        # PyTorch's default Linear/LayerNorm init, as the official layer: GLIP's BertEncoderLayer is
        # a BertPreTrainedModel that never calls init_weights(), so BERT's N(0, 0.02) is not used.

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden: (B, T, D); mask: (B, T) with 1 for real tokens. Returns (B, T, D)."""
        q, k, v = self._split(self.query(hidden)), self._split(self.key(hidden)), self._split(
            self.value(hidden)
        )
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if self.clamp_min:
            scores = scores.clamp(min=-CLAMP_VALUE)
        if self.clamp_max:
            scores = scores.clamp(max=CLAMP_VALUE)
        # padding set to the dtype's lowest value, not shifted by it: in float16 (-65504) a
        # shifted padding score could stay above real scores clamped near -50000
        scores = scores.masked_fill(mask[:, None, None, :] == 0, torch.finfo(scores.dtype).min)
        probs = self.dropout(scores.softmax(dim=-1))
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(hidden.shape)
        attn = self.attn_norm(self.dropout(self.attn_out(ctx)) + hidden)
        out = self.ffn_out(F.gelu(self.ffn_in(attn)))
        return self.ffn_norm(self.dropout(out) + attn)
