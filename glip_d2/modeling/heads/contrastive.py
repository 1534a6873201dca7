"""GLIPv2's inter-image region-word contrastive loss (Zhang et al. 2022, "region-word contrastive
learning"): the regions of every image in the global batch against the words of every prompt in
the global batch. A region's positives are the words that name it (its row of the positive map);
every other word, the words of other images' prompts included, is a negative.

Under DDP, regions and words are gathered from all workers with a gradient-preserving
all_gather, and each worker's loss is normalised so that the workers' mean equals the loss of one
process on the concatenated batch (which DDP's gradient averaging then optimises).
"""
from typing import List, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather of equally shaped tensors whose backward returns to each worker the sum, over
    all workers, of the gradients that reached its own slice."""

    @staticmethod
    def forward(ctx, x):
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        grad = torch.stack(grads).contiguous()
        dist.all_reduce(grad)  # every worker's loss may depend on every slice
        return grad[dist.get_rank()]


def all_gather_with_grad(x: torch.Tensor) -> List[torch.Tensor]:
    """Gather a (N_rank, ...) tensor from every worker (N may differ between workers).

    Returns:
        the list of every worker's tensor, in rank order; every slice carries gradients back to
        the worker it came from. Without a process group: `[x]`.
    """
    world, _ = _world()
    if world == 1:
        return [x]
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    padded = F.pad(x, (0, 0) * (x.dim() - 1) + (0, longest - x.shape[0]))
    return [t[:s] for t, s in zip(_GatherWithGrad.apply(padded), sizes)]


def _soft_target_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over rows with a positive of the cross-entropy between softmax(row) and the uniform
    distribution over the row's positives. logits, targets: (N, M)."""
    rows = targets.any(dim=1)
    if not rows.any():
        return logits.sum() * 0.0
    t = targets[rows].to(logits.dtype)
    log_p = torch.log_softmax(logits[rows], dim=1)
    return -((t * log_p).sum(1) / t.sum(1)).sum()


def region_word_contrastive_loss(
    regions: torch.Tensor, words: torch.Tensor, targets: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """The loss of one process on a whole batch.

    Args:
        regions: (R, C) region features of all images.
        words: (W, C) word features of all prompts.
        targets: (R, W) bool, True where the word names the region.
        scale: the logits are ``scale * regions @ words.T``.

    Returns:
        0.5 * (region->word + word->region) cross-entropy, each averaged over the regions (words)
        with at least one positive.
    """
    logits = scale * regions @ words.t()
    n_r = max(int(targets.any(1).sum()), 1)
    n_w = max(int(targets.any(0).sum()), 1)
    return 0.5 * (_soft_target_ce(logits, targets) / n_r + _soft_target_ce(logits.t(), targets.t()) / n_w)


def gathered_region_word_contrastive_loss(
    regions: torch.Tensor, words: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """This worker's share of :func:`region_word_contrastive_loss` on the global batch.

    Args:
        regions: (R, C) this worker's region features; words: (W, C) its word features;
        targets: (R, W) bool (regions and words of different images already False).
        scale: logit scale (a tensor, so a learned temperature gets its gradient).

    Returns:
        a scalar whose mean over workers equals the single-process loss on the concatenated
        batch; with one worker, exactly that loss.
    """
    world, rank = _world()
    all_regions = all_gather_with_grad(regions)
    all_words = all_gather_with_grad(words)
    r_off = sum(t.shape[0] for t in all_regions[:rank])
    w_off = sum(t.shape[0] for t in all_words[:rank])
    g_regions, g_words = torch.cat(all_regions), torch.cat(all_words)
    # this worker's rows against every word, its words against every region
    r2w_t = targets.new_zeros(regions.shape[0], g_words.shape[0])
    r2w_t[:, w_off : w_off + words.shape[0]] = targets
    w2r_t = targets.new_zeros(words.shape[0], g_regions.shape[0])
    w2r_t[:, r_off : r_off + regions.shape[0]] = targets.t()
    r2w = _soft_target_ce(scale * regions @ g_words.t(), r2w_t)
    w2r = _soft_target_ce(scale * words @ g_regions.t(), w2r_t)
    counts = torch.tensor(
        [float(targets.any(1).sum()), float(targets.any(0).sum())], device=regions.device
    )
    if world > 1:
        dist.all_reduce(counts)
    n_r, n_w = counts.clamp(min=1).tolist()
    return world * 0.5 * (r2w / n_r + w2r / n_w)
