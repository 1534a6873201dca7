"""Region-word alignment scores S = O P^T: the one module every GLIP head classifies with."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..fusion.bi_attention import CLAMP_VALUE


# MODEL.ATSS.REGION_PROJECTION values.
REGION_PROJECTIONS = ("", "linear_ln")


class RegionWordScorer(nn.Module):
    """Logit of region i for token j: <o_i, W t_j / 2> / exp(log_scale) + <t_j, b_lang> + b0,
    with t_j the L2-normalised token feature (official dot-product head).

    Args:
        region_dim: width of region features (C).
        language_dim: width of token features (D).
        prior_prob: initial foreground probability (sets b0).
        log_scale: initial log temperature.
        clamp: clamp logits to +-50000 (fp16 safety).
        region_projection: "" = regions are scored as they come (official GLIP: identity);
            "linear_ln" = a learned linear map followed by LayerNorm first (the two-stage
            region embedding), so every region is scored from a zero-mean, unit-variance vector.
        center_tokens: subtract from every projected token the mean over the prompt's real
            tokens (not official). A score shared by all tokens of the prompt ("an object is
            here, whatever its name") then cannot come from the dot product; raising one token's
            score at a region lowers the others'.
    """

    def __init__(self, region_dim: int, language_dim: int, prior_prob: float = 0.01,
                 log_scale: float = 0.0, clamp: bool = True, region_projection: str = "",
                 center_tokens: bool = False):
        super().__init__()
        if region_projection not in REGION_PROJECTIONS:
            raise ValueError(
                f"Region projection {region_projection!r} is not one of {REGION_PROJECTIONS} "
                "(MODEL.ATSS.REGION_PROJECTION)."
            )
        self.proj_region = (
            nn.Sequential(nn.Linear(region_dim, region_dim), nn.LayerNorm(region_dim))
            if region_projection == "linear_ln" else None
        )
        self.proj_text = nn.Linear(language_dim, region_dim)
        self.log_scale = nn.Parameter(torch.tensor([float(log_scale)]))
        self.bias_lang = nn.Parameter(torch.zeros(language_dim))
        self.bias0 = nn.Parameter(torch.tensor([-math.log((1 - prior_prob) / prior_prob)]))
        self.clamp = clamp
        self.center_tokens = center_tokens

    def encode_tokens(self, tokens: torch.Tensor, mask=None):
        """(B, T, D) token features and (B, T) mask of real tokens -> ((B, T, C) projected tokens,
        (B, T) token bias). The mask is needed with `center_tokens` (else all T count)."""
        emb = F.normalize(tokens, p=2, dim=-1)
        proj = self.proj_text(emb / 2.0)
        if self.center_tokens:
            w = (torch.ones(proj.shape[:2], device=proj.device) if mask is None else (mask > 0)).to(proj.dtype)
            mean = (proj * w[..., None]).sum(1, keepdim=True) / w.sum(1).clamp(min=1)[:, None, None]
            proj = proj - mean
        return proj, torch.matmul(emb, self.bias_lang) + self.bias0

    def forward(self, regions: torch.Tensor, tokens: torch.Tensor, mask=None) -> torch.Tensor:
        """regions (B, N, C), tokens (B, T, D), optional (B, T) real-token mask -> logits (B, N, T)."""
        proj, bias = self.encode_tokens(tokens, mask)
        return self.score(regions, proj, bias)

    def score(self, regions: torch.Tensor, proj: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if self.proj_region is not None:
            regions = self.proj_region(regions)
        logits = torch.matmul(regions, proj.transpose(-1, -2)) / self.log_scale.exp() + bias[:, None, :]
        if self.clamp:
            logits = logits.clamp(min=-CLAMP_VALUE, max=CLAMP_VALUE)
        return logits
