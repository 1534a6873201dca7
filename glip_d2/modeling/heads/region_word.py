"""Region-word alignment scores S = O P^T: the one module every GLIP head classifies with."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..fusion.bi_attention import CLAMP_VALUE


class RegionWordScorer(nn.Module):
    """Logit of region i for token j: <o_i, W t_j / 2> / exp(log_scale) + <t_j, b_lang> + b0,
    with t_j the L2-normalised token feature (official dot-product head).

    Args:
        region_dim: width of region features (C).
        language_dim: width of token features (D).
        prior_prob: initial foreground probability (sets b0).
        log_scale: initial log temperature.
        clamp: clamp logits to +-50000 (fp16 safety).
    """

    def __init__(self, region_dim: int, language_dim: int, prior_prob: float = 0.01,
                 log_scale: float = 0.0, clamp: bool = True):
        super().__init__()
        self.proj_text = nn.Linear(language_dim, region_dim)
        self.log_scale = nn.Parameter(torch.tensor([float(log_scale)]))
        self.bias_lang = nn.Parameter(torch.zeros(language_dim))
        self.bias0 = nn.Parameter(torch.tensor([-math.log((1 - prior_prob) / prior_prob)]))
        self.clamp = clamp

    def encode_tokens(self, tokens: torch.Tensor):
        """(B, T, D) token features -> ((B, T, C) projected tokens, (B, T) token bias)."""
        emb = F.normalize(tokens, p=2, dim=-1)
        return self.proj_text(emb / 2.0), torch.matmul(emb, self.bias_lang) + self.bias0

    def forward(self, regions: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """regions (B, N, C), tokens (B, T, D) -> logits (B, N, T)."""
        proj, bias = self.encode_tokens(tokens)
        return self.score(regions, proj, bias)

    def score(self, regions: torch.Tensor, proj: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        logits = torch.matmul(regions, proj.transpose(-1, -2)) / self.log_scale.exp() + bias[:, None, :]
        if self.clamp:
            logits = logits.clamp(min=-CLAMP_VALUE, max=CLAMP_VALUE)
        return logits
