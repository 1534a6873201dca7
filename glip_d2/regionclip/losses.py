"""RegionCLIP's region-concept losses (region-level pretraining objectives)."""

import torch
import torch.nn.functional as F

__all__ = [
    "pseudo_region_labels",
    "region_concept_contrastive_loss",
    "region_concept_distillation_loss",
    "image_text_contrastive_loss",
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


def image_text_contrastive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Symmetric InfoNCE between the images of a batch and their captions (CLIP's loss).

    Image i's caption is the positive of image i, the other captions of the batch its negatives,
    and the other way round; the loss is the mean of the image->text and text->image
    cross-entropies.

    Args:
        image_emb: (B, P) student image embeddings (normalised here).
        text_emb: (B, P) caption embeddings, row i = caption of image i (normalised here).
        temperature: the logits are cosine similarities / temperature.
    Returns:
        the loss (0 for a batch of fewer than two images: nothing to contrast with).
    """
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image_emb {tuple(image_emb.shape)} and text_emb {tuple(text_emb.shape)} must both "
            "be (batch, dim), one caption per image."
        )
    if image_emb.shape[0] < 2:
        return image_emb.sum() * 0.0
    logits = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T / temperature
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
