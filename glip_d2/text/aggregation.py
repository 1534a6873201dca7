"""From per-token scores to per-label scores (official ``MODEL.DYHEAD.SCORE_AGG``, and more)."""

from __future__ import annotations

from ._torch import require_torch, torch  # torch is None where not installed

__all__ = ["aggregate_token_scores"]

_MODES = ("mean", "max", "min", "geo_mean")


def aggregate_token_scores(
    token_scores: torch.Tensor,
    positive_map: torch.Tensor,
    mode: str = "mean",
    *,
    empty_label: str = "error",
) -> torch.Tensor:
    """Score each label by the scores of its tokens.

    ``"mean"`` is the official ``SCORE_AGG: MEAN`` (``convert_grounding_to_od_logits``): the
    average over the label's tokens, computed as sum then divide in at least float32.
    ``"max"`` takes the best token, ``"min"`` the worst (a name is as present as its
    least-present word) and ``"geo_mean"`` the geometric mean (scores are probabilities; they are
    clamped at 1e-12 before the log).

    Args:
        token_scores: ``(..., T)`` scores per token, e.g. sigmoid of the dot-product logits.
            Must be finite on every column (the mean is a matrix product).
        positive_map: ``(L, W)`` with ``W >= T``; non-zero where a token belongs to a label
            (boolean, or the official normalised float map). Only the first ``T`` columns are
            used, so a map padded to MAX_QUERY_LEN works with scores cut to the real tokens.
        mode: one of ``"mean"``, ``"max"``, ``"min"``, ``"geo_mean"`` (case-insensitive).
        empty_label: what a label with no token among the first ``T`` gets: ``"error"`` raises,
            ``"zero"`` scores it 0 in every mode (the one-stage head's choice).

    Returns:
        ``(..., L)`` label scores, dtype of ``token_scores``.

    Raises:
        ValueError: on an unknown mode, a map narrower than ``T``, or (``empty_label="error"``)
            a label with no token among the first ``T``.
    """
    require_torch("aggregate_token_scores")
    mode = mode.lower()
    if mode not in _MODES:
        raise ValueError(f"Unknown score aggregation {mode!r}; use one of {_MODES}.")
    if empty_label not in ("error", "zero"):
        raise ValueError(f"empty_label must be 'error' or 'zero', got {empty_label!r}.")
    num_tokens = token_scores.shape[-1]
    if positive_map.dim() != 2 or positive_map.shape[1] < num_tokens:
        raise ValueError(
            f"positive_map must be (num_labels, >= {num_tokens}) to cover the {num_tokens} token "
            f"scores, got shape {tuple(positive_map.shape)}."
        )
    mask = positive_map[:, :num_tokens].to(device=token_scores.device) != 0  # (L, T)
    counts = mask.sum(dim=1)  # (L,)
    empty = counts == 0
    if empty_label == "error" and bool(empty.any()):
        raise ValueError(
            f"Labels {empty.nonzero().flatten().tolist()} have no token among the first "
            f"{num_tokens}; their spans were cut off or never mapped. Keep every label's tokens "
            "inside the scored tokens."
        )
    if mode == "mean":
        # In at least float32, as torch's mean accumulates: a float16 sum of large logits (the
        # head clamps them at +-50000) would overflow to inf where the official mean is finite.
        dtype = torch.promote_types(token_scores.dtype, torch.float32)
        weights = mask.to(dtype).t()  # (T, L)
        divisor = counts.clamp(min=1).to(dtype)
        mean = token_scores.to(dtype) @ weights / divisor  # an empty label: 0 / 1
        return mean.to(token_scores.dtype)
    if mode == "geo_mean":
        return _geometric_mean(token_scores, mask, counts).masked_fill(empty, 0.0)
    gathered = token_scores[..., _label_token_index(mask)]  # (..., L, K)
    extreme = gathered.amax(dim=-1) if mode == "max" else gathered.amin(dim=-1)
    return extreme.masked_fill(empty, 0.0)


def _geometric_mean(token_scores: torch.Tensor, mask: torch.Tensor, counts: torch.Tensor):
    """exp(mean log score) per label, in at least float32: the 1e-12 clamp is 0 in float16, and
    the log of a 0 score (-inf) times a 0 weight would make every label's score NaN."""
    dtype = torch.promote_types(token_scores.dtype, torch.float32)
    logs = token_scores.to(dtype).clamp(min=1e-12).log()
    weights = mask.to(dtype).t()  # (T, L)
    divisor = counts.clamp(min=1).to(dtype)
    return ((logs @ weights) / divisor).exp().to(token_scores.dtype)


def _label_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(L, T) bool -> (L, K) token indices, K the most tokens of a label; each row lists its
    label's tokens, padded by repeating its first one (so max / min are unchanged). Memory is
    L x K per score row, not L x T: a full LVIS chunk at P3 stays small."""
    num_labels, num_tokens = mask.shape
    positions = torch.arange(num_tokens, device=mask.device).expand(num_labels, num_tokens)
    # the label's tokens first, in order; the others pushed behind them
    ordered = (positions + num_tokens * (~mask).long()).sort(dim=1).values % num_tokens
    counts = mask.sum(dim=1, keepdim=True)
    width = max(int(counts.max()), 1) if num_labels else 1
    slots = torch.arange(width, device=mask.device)
    return torch.where(slots < counts, ordered[:, :width], ordered[:, :1])
