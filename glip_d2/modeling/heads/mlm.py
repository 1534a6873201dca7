"""GLIPv2's masked language modelling: prompt tokens the grounding loss does not need are masked
before the language backbone, and predicted back from the fusion tower's text features."""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Labels of tokens that are not predicted (PyTorch's cross-entropy ignore_index).
IGNORE = -100


def maskable_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positive_tokens: torch.Tensor,
    special_ids: Sequence[int],
) -> torch.Tensor:
    """Tokens MLM may mask: real, not special, and inside no positive span.

    Args:
        input_ids, attention_mask: (B, T).
        positive_tokens: (B, T) bool, True for tokens any ground-truth box is matched to.
        special_ids: the tokenizer's special token ids ([CLS], [SEP], [PAD], ...).

    Returns:
        (B, T) bool.
    """
    special = torch.isin(input_ids, torch.as_tensor(list(special_ids), device=input_ids.device))
    return (attention_mask > 0) & ~special & ~positive_tokens


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    probability: float = 0.15,
    generator: Optional[torch.Generator] = None,
):
    """BERT's masking: each maskable token is chosen with `probability`; a chosen token becomes
    [MASK] (80 %), a random token (10 %) or stays (10 %), and is to be predicted.

    Args:
        input_ids: (B, T) token ids; maskable: (B, T) bool (:func:`maskable_tokens`).
        generator: a CPU generator for reproducible masks.

    Returns:
        (masked input ids, labels): labels are the original ids at chosen tokens, IGNORE elsewhere.
        Token positions never move, so positive maps computed on the unmasked prompt still hold.
    """
    shape = input_ids.shape
    draw = torch.rand(shape, generator=generator).to(input_ids.device)
    chosen = maskable & (draw < probability)
    how = torch.rand(shape, generator=generator).to(input_ids.device)
    random_ids = torch.randint(vocab_size, shape, generator=generator).to(input_ids.device)
    masked = torch.where(chosen & (how < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(chosen & (how >= 0.8) & (how < 0.9), random_ids, masked)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    return masked, labels


class MLMHead(nn.Module):
    """Two-layer MLP from fused token features to vocabulary logits:
    Linear(D, D) -> GELU -> LayerNorm -> Linear(D, vocab)."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.decoder = nn.Linear(dim, vocab_size)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, vocab) logits."""
        return self.decoder(self.transform(text))

    def loss(self, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the tokens with a label (0 when none is masked).
        text: (B, T, D); labels: (B, T) with IGNORE at tokens not predicted."""
        chosen = labels != IGNORE
        if not chosen.any():
            return sum(p.sum() for p in self.parameters()) * 0.0 + text.sum() * 0.0
        return F.cross_entropy(self(text[chosen]).float(), labels[chosen])
