"""From per-token scores to per-label scores (official ``MODEL.DYHEAD.SCORE_AGG``)."""

import torch

__all__ = ["aggregate_token_scores"]

_MODES = ("mean", "max")


def aggregate_token_scores(
    token_scores: torch.Tensor, positive_map: torch.Tensor, mode: str = "mean"
) -> torch.Tensor:
    """Score each label by the scores of its tokens.

    ``"mean"`` is the official ``SCORE_AGG: MEAN`` (``convert_grounding_to_od_logits``): the
    average over the label's tokens, computed as sum then divide. ``"max"`` takes the best token.

    Args:
        token_scores: ``(..., T)`` scores per token, e.g. sigmoid of the dot-product logits.
            Must be finite on every column (the mean is a matrix product).
        positive_map: ``(L, W)`` with ``W >= T``; non-zero where a token belongs to a label
            (boolean, or the official normalised float map). Only the first ``T`` columns are
            used, so a map padded to MAX_QUERY_LEN works with scores cut to the real tokens.
        mode: ``"mean"`` or ``"max"`` (case-insensitive).

    Returns:
        ``(..., L)`` label scores, dtype of ``token_scores``.

    Raises:
        ValueError: on an unknown mode, a map narrower than ``T``, or a label with no token among
            the first ``T``.
    """
    mode = mode.lower()
    if mode not in _MODES:
        raise ValueError(f"Unknown score aggregation {mode!r}; use one of {_MODES}.")
    num_tokens = token_scores.shape[-1]
    if positive_map.dim() != 2 or positive_map.shape[1] < num_tokens:
        raise ValueError(
            f"positive_map must be (num_labels, >= {num_tokens}) to cover the {num_tokens} token "
            f"scores, got shape {tuple(positive_map.shape)}."
        )
    mask = positive_map[:, :num_tokens].to(device=token_scores.device) != 0  # (L, T)
    counts = mask.sum(dim=1)  # (L,)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"Labels {empty} have no token among the first {num_tokens}; their spans were cut "
            "off or never mapped. Keep every label's tokens inside the scored tokens."
        )
    if mode == "mean":
        summed = token_scores @ mask.to(token_scores.dtype).t()  # (..., L)
        return summed / counts.to(token_scores.dtype)
    columns = [token_scores[..., row.nonzero().flatten()].amax(dim=-1) for row in mask]
    return torch.stack(columns, dim=-1)
