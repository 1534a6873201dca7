"""RegionCLIP's region-concept losses (region-level pretraining objectives)."""

import torch
import torch.nn.functional as F

__all__ = [
    "pseudo_region_labels",
    "region_concept_contrastive_loss",
    "region_concept_distillation_loss",
]


def pseudo_region_labels(teacher_scores: torch.Tensor) -> torch.Tensor:
    """(R, K) teacher region-concept similarities -> (R,) the best concept of each region."""
    return teacher_scores.argmax(dim=1)


def region_concept_contrastive_loss(
    region_emb: torch.Tensor, concept_emb: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Cross-entropy of each region over the concept pool, its pseudo concept the positive.

    Args:
        region_emb: (R, P) student region embeddings (normalised here).
        concept_emb: (K, P) concept embeddings (normalised here).
        targets: (R,) pseudo concept per region.
        temperature: the logits are cosine similarities / temperature.
    Returns:
        mean over regions (0 with no region).
    """
    if region_emb.shape[0] == 0:
        return region_emb.sum() * 0.0
    logits = F.normalize(region_emb, dim=-1) @ F.normalize(concept_emb, dim=-1).T / temperature
    return F.cross_entropy(logits, targets)


def region_concept_distillation_loss(
    student_scores: torch.Tensor, teacher_scores: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher || student) of the region-concept distributions, averaged over regions.

    Args:
        student_scores, teacher_scores: (R, K) cosine similarities.
        temperature: both distributions are softmax(scores / temperature).
    """
    if student_scores.shape[0] == 0:
        return student_scores.sum() * 0.0
    log_p_student = F.log_softmax(student_scores / temperature, dim=-1)
    p_teacher = F.softmax(teacher_scores / temperature, dim=-1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean")
