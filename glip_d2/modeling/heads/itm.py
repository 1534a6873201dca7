"""X-VLM's image-text matching (ITM; Zeng et al. 2022): a binary matched / not-matched classifier
on the fused [CLS] token of the cross-modal encoder, which in glip_d2 is the fusion tower.

The matched pairs are the training forward's own (image, caption) pairs: their fused [CLS] comes
from the grounding pass at no extra cost. Each image also gets one mismatched caption of another
input, and those pairs need a second fusion-tower pass (the tower is the cross-modal encoder; the
image backbone and the text encoder are not run again). Negatives are picked in one of two ways:

* ``"shift"``: the next caption of the batch (cyclically) that differs from the image's own, a
  cheap stand-in for hard negatives;
* ``"hard"``: sampled with probability softmax(ITC similarity) over the batch's other captions,
  as X-VLM does (it needs the ITC head for the similarities).

Captions equal to the image's own are never negatives. X-VLM also pairs each text with a
mismatched image (2 negatives per positive, two extra passes); glip_d2 takes the text side only,
so one extra tower pass over the caption inputs, and the classes are balanced 1:1.
"""

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# MODEL.GLIP.LOSSES.ITM_NEGATIVES values.
ITM_NEGATIVES = ("shift", "hard")


def shifted_negatives(texts: Sequence[str]) -> List[Optional[int]]:
    """For each pair k, the first pair after k (cyclically) whose text differs from text k, or None
    when every text equals it."""
    n = len(texts)
    return [
        next((j for j in ((k + s) % n for s in range(1, n)) if texts[j] != texts[k]), None)
        for k in range(n)
    ]


def hard_negatives(
    similarity: torch.Tensor, texts: Sequence[str], generator: Optional[torch.Generator] = None
) -> List[Optional[int]]:
    """X-VLM's hard negatives: for each image k, a text j sampled with probability
    softmax_j(similarity[k]) among the texts that differ from text k (None if none does).

    Args:
        similarity: (N, N) image-to-text logits (ITC similarity / temperature).
        texts: the N texts.
        generator: a CPU generator for reproducible draws.
    """
    n = len(texts)
    if n == 0:
        return []
    allowed = torch.tensor([[a != b for b in texts] for a in texts], dtype=torch.bool)
    logits = similarity.detach().float().cpu().masked_fill(~allowed, float("-inf"))
    out: List[Optional[int]] = []
    for k in range(n):
        if not allowed[k].any():
            out.append(None)
            continue
        probs = torch.softmax(logits[k], dim=0)
        out.append(int(torch.multinomial(probs, 1, generator=generator)))
    return out


class ImageTextMatchingHead(nn.Module):
    """Two-layer MLP from the fused [CLS] feature to (not matched, matched) logits:
    Linear(D, D) -> GELU -> LayerNorm -> Linear(D, 2).

    Args:
        dim: width of the fused text features (D).
        negatives: one of ITM_NEGATIVES.
        weight: multiplies the loss.
    """

    def __init__(self, dim: int, negatives: str = "shift", weight: float = 1.0):
        super().__init__()
        if negatives not in ITM_NEGATIVES:
            raise ValueError(
                f"MODEL.GLIP.LOSSES.ITM_NEGATIVES {negatives!r} is not one of {ITM_NEGATIVES}."
            )
        self.classifier = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim), nn.Linear(dim, 2)
        )
        self.negatives = negatives
        self.weight = weight

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        """(N, D) fused [CLS] features -> (N, 2) logits; class 1 = matched."""
        return self.classifier(cls.float())

    def loss(self, positive_cls: torch.Tensor, negative_cls: torch.Tensor) -> torch.Tensor:
        """Weighted mean cross-entropy over the matched (label 1) and mismatched (label 0) pairs.

        Args:
            positive_cls: (P, D) fused [CLS] of matched pairs; negative_cls: (Q, D) of mismatched.

        Returns:
            the loss; 0 (still connected to the head) when there is no negative, since positives
            alone would only teach "always matched".
        """
        if negative_cls.shape[0] == 0:
            return sum(p.sum() for p in self.parameters()) * 0.0 + positive_cls.sum() * 0.0
        logits = self(torch.cat([positive_cls, negative_cls]))
        labels = torch.cat(
            [
                torch.ones(positive_cls.shape[0], dtype=torch.long),
                torch.zeros(negative_cls.shape[0], dtype=torch.long),
            ]
        ).to(logits.device)
        return self.weight * F.cross_entropy(logits, labels)
