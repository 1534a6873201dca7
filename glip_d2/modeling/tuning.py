"""Which parameters train when a pretrained GLIP is adapted to a new task (MODEL.GLIP.TUNING).

The modes of the official ``SOLVER.TUNING_HIGHLEVEL_OVERRIDE``:

* ``full``: everything that the rest of the config leaves trainable.
* ``linear``: a linear probe: only the head's final layers. One-stage GLIP: box regression,
  centerness and the region-word scorer (text projection, ``log_scale``, ``bias_lang``,
  ``bias0``); the two-stage model: the ROI box predictor (region projection, region-word scorer,
  box regression) and a mask head's last layer.
* ``prompt``: GLIP's prompt tuning (official ``language_prompt_v2``): the frozen text encoder
  encodes the task's prompt once (P0), a learned offset initialised to zeros is added to its
  token features, and only the offset trains. The prompt and the offset are kept in the model
  (:class:`PromptTuning`), so the checkpoint carries the learned prompt and inference with that
  prompt needs no text encoder.
* ``language_frozen``: everything but the text encoder.
"""
import logging
from typing import Dict, List, Sequence

import torch
from torch import nn

__all__ = [
    "TUNING_MODES",
    "LINEAR_PREFIXES",
    "TWO_STAGE_LINEAR_PREFIXES",
    "PromptTuning",
    "apply_tuning",
    "count_trainable",
]

logger = logging.getLogger(__name__)

TUNING_MODES = ("full", "linear", "prompt", "language_frozen")

# Parameters a linear probe trains (the official LINEAR_PROB list: bbox_pred, centerness,
# dot_product_projection_text, log_scale, bias_lang, bias0) and, with MODEL.MASK_ON, the mask
# head's last layer, as in the two-stage model (no official checkpoint has a mask head: frozen
# whole, a new one would never learn).
LINEAR_PREFIXES = ("head.bbox_pred.", "head.centerness.", "head.scorer.",
                   "mask_head.predictor.predictor.")
# The two-stage model's counterparts: the ROI box predictor(s) (region projection, region-word
# scorer, box regression) and the mask head's last layer.
TWO_STAGE_LINEAR_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_head.predictor.")


class PromptTuning(nn.Module):
    """One task prompt encoded by the frozen text encoder (P0) plus a learned offset.

    Buffers hold the prompt's token ids and features, so a checkpoint carries the tuned prompt;
    ``offset`` is a per-position offset over the MAX_QUERY_LEN token slots (like the official
    ``tunable_linear``), initialised to zeros so that training starts at the zero-shot model.
    """

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(max_len, dim))
        self.register_buffer("input_ids", torch.zeros(max_len, dtype=torch.long))
        self.register_buffer("masks", torch.zeros(max_len, dtype=torch.long))
        self.register_buffer("length", torch.zeros((), dtype=torch.long))
        self.register_buffer("hidden", torch.zeros(max_len, dim))
        self.register_buffer("embedded", torch.zeros(max_len, dim))

    @property
    def initialized(self) -> bool:
        return int(self.length) > 0

    def matches(self, input_ids: torch.Tensor) -> bool:
        """Whether every row of ``input_ids`` (B, T) is the stored prompt."""
        n = int(self.length)
        if n == 0 or input_ids.shape[1] != n:
            return False
        return bool((input_ids.to(self.input_ids.device) == self.input_ids[:n]).all())

    @torch.no_grad()
    def store(self, input_ids: torch.Tensor, lang: Dict[str, torch.Tensor]) -> None:
        """Keep one prompt's ids (T,) and its text-encoder features P0 (language dict, batch 1)."""
        n = input_ids.shape[-1]
        if n > self.input_ids.numel():
            raise ValueError(f"The prompt has {n} tokens, more than MAX_QUERY_LEN={self.input_ids.numel()}.")
        self.input_ids.zero_()
        self.input_ids[:n] = input_ids.reshape(-1)
        self.masks.zero_()
        self.masks[:n] = lang["masks"].reshape(-1)
        self.hidden.zero_()
        self.hidden[:n] = lang["hidden"].reshape(n, -1)
        self.embedded.zero_()
        self.embedded[:n] = lang["embedded"].reshape(n, -1)
        self.length.fill_(n)

    def features(self, batch_size: int) -> Dict[str, torch.Tensor]:
        """The tuned prompt's language dict, (B, T, D) features: P0 + offset."""
        n = int(self.length)
        mask = self.masks[:n]
        offset = self.offset[:n]
        hidden = self.hidden[:n] + offset
        embedded = self.embedded[:n] + offset * mask[:, None].to(offset.dtype)  # padding stays 0
        return {
            "hidden": hidden.unsqueeze(0).expand(batch_size, -1, -1),
            "embedded": embedded.unsqueeze(0).expand(batch_size, -1, -1),
            "masks": mask.unsqueeze(0).expand(batch_size, -1),
        }


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def apply_tuning(
    model: nn.Module, mode: str, linear_prefixes: Sequence[str] = LINEAR_PREFIXES
) -> List[str]:
    """Freeze what ``mode`` does not train, in place; never unfreezes anything.

    Args:
        model: the model (its ``prompt_tuning`` module, for "prompt").
        mode: one of :data:`TUNING_MODES`.
        linear_prefixes: the parameter names a linear probe trains (:data:`LINEAR_PREFIXES` for
            one-stage GLIP, :data:`TWO_STAGE_LINEAR_PREFIXES` for the two-stage model).

    Returns:
        the names of the modules whose parameters are now all frozen, by this mode or before
        (kept in eval mode while training, so their dropout is off, as the official frozen
        modules).

    Raises:
        ValueError: for an unknown mode, "prompt" on a model without ``prompt_tuning``, or
            "linear" on a model with no parameter under ``linear_prefixes``.
    """
    if mode not in TUNING_MODES:
        raise ValueError(f"MODEL.GLIP.TUNING {mode!r} is not one of {TUNING_MODES}.")
    if mode == "prompt" and getattr(model, "prompt_tuning", None) is None:
        raise ValueError("Prompt tuning needs the model's prompt_tuning module (MODEL.GLIP.TUNING prompt).")
    if mode == "linear" and not any(
        n.startswith(tuple(linear_prefixes)) for n, _ in model.named_parameters()
    ):
        raise ValueError(
            f"MODEL.GLIP.TUNING linear trains the parameters under {tuple(linear_prefixes)}, "
            "but this model has none; nothing would train."
        )
    for name, p in model.named_parameters():
        if mode == "linear":
            keep = name.startswith(tuple(linear_prefixes))
        elif mode == "prompt":
            keep = name.startswith("prompt_tuning.")
        elif mode == "language_frozen":
            keep = not name.startswith("language_backbone.")
        else:
            keep = True
        if not keep:
            p.requires_grad_(False)
    # every module left without a trainable parameter, whichever option froze it (this mode,
    # LANGUAGE_BACKBONE.FREEZE, GLIP.FREEZE_BACKBONE): the official train() keeps frozen
    # backbones in eval mode too, so their dropout and drop-path are off
    frozen = []
    for name, module in model.named_modules():
        params = list(module.parameters())
        if name and params and not any(p.requires_grad for p in params):
            if not any(name.startswith(f + ".") for f in frozen):
                frozen.append(name)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        f"Tuning mode {mode!r}: {count_trainable(model):,} of {total:,} parameters train."
    )
    return frozen
