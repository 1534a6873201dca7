"""X-VLM's bounding-box prediction (Zeng et al. 2022, "Multi-Grained Vision Language
Pre-Training"): the box a whole text describes, regressed from the text's [CLS] feature
cross-attending to the image features, then an MLP with a sigmoid; trained with L1 + GIoU.

In glip_d2 the head reads GLIP's fusion-tower outputs: the fused [CLS] token of the prompt and
the fused pyramid levels, so it costs one extra attention over the image per prompt.
"""
import math
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from .anchors import tower_level_strides
from .losses import check_loss_weight

TEXT_BOX_HEAD_REGISTRY = Registry("TEXT_BOX_HEAD")
TEXT_BOX_HEAD_REGISTRY.__doc__ = """
Heads that regress the one box a text refers to (X-VLM's bounding-box prediction).

Built by ``TEXT_BOX_HEAD_REGISTRY.get(cfg.MODEL.GLIP.TEXT_BOX_HEAD.NAME)(cfg)``; called as
``head(visual, text, text_mask, image_sizes) -> (B, 4)`` with ``visual`` the fusion tower's
levels (each (B, C, H_l, W_l), strides MODEL.ATSS.ANCHOR_STRIDES), ``text`` (B, T, D) fused
token features ([CLS] first), ``text_mask`` (B, T) and ``image_sizes`` [(h, w)] of the images in
the padded batch; returns normalised (cx, cy, w, h) in [0, 1] of each image's own size.
"""


def build_text_box_head(cfg, language_dim: int):
    """The configured text-to-box head, or None when MODEL.GLIP.TEXT_BOX_HEAD.NAME is "".

    Raises:
        ValueError: for TEXT_BOX_HEAD.PREDICT without a head (it was ignored: a referring
            expression evaluation scored the grounding detections instead).
    """
    name = cfg.MODEL.GLIP.TEXT_BOX_HEAD.NAME
    if not name:
        if cfg.MODEL.GLIP.TEXT_BOX_HEAD.PREDICT:
            raise ValueError(
                "MODEL.GLIP.TEXT_BOX_HEAD.PREDICT answers captions with the text-to-box head, "
                "but TEXT_BOX_HEAD.NAME is empty: set NAME (e.g. XVLMBoxHead) or PREDICT False."
            )
        return None
    return TEXT_BOX_HEAD_REGISTRY.get(name)(cfg, language_dim=language_dim)


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def text_box_losses(pred: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
    """X-VLM's box losses, averaged over the boxes.

    Args:
        pred, target: (N, 4) normalised (cx, cy, w, h).

    Returns:
        {"loss_text_box_l1": mean over boxes of the L1 distance summed over the 4 coordinates,
        "loss_text_box_giou": mean of 1 - GIoU of the xyxy boxes}.
    """
    if pred.shape[0] == 0:
        zero = pred.sum() * 0.0
        return {"loss_text_box_l1": zero, "loss_text_box_giou": zero}
    l1 = (pred - target).abs().sum(-1).mean()
    giou = generalized_box_iou_loss(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(target), reduction="mean")
    return {"loss_text_box_l1": l1, "loss_text_box_giou": giou}


def _position_features(h: int, w: int, stride: int, size: Tuple[int, int], freqs: int, device):
    """(H*W, 4*freqs) Fourier features of each cell centre, normalised by the image's own size,
    and (H*W,) whether the centre lies inside the image (not in the batch padding)."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride / size[0]
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride / size[1]
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)  # (H*W, 2)
    scales = math.pi * 2.0 ** torch.arange(freqs, device=device, dtype=torch.float32)
    angles = (coords[:, :, None] * scales).flatten(1)  # (H*W, 2*freqs)
    inside = (coords <= 1.0).all(-1)
    return torch.cat([angles.sin(), angles.cos()], dim=-1), inside


@TEXT_BOX_HEAD_REGISTRY.register()
class XVLMBoxHead(nn.Module):
    """[CLS] query -> multi-head cross-attention over the first `num_levels` fused levels (cells
    carry Fourier features of their normalised position) -> residual + LayerNorm -> 3-layer MLP
    -> sigmoid (cx, cy, w, h).

    The attention is written out with one projection per role (query, key, value) and scaled
    dot products. Keys are each cell's content plus a level embedding; values its content plus
    its position, so the attention picks the cells the text describes and the MLP reads where they
    are (``position_in="values"``, the default). ``"keys"`` adds the position to the keys too, so
    the logits also see where a cell is. On cached fused features of the demo model, this head
    reached 13-20 % Acc@0.5 after 8000 expressions where the first version (``nn.MultiheadAttention``
    over a shared key projection, position in keys and values) stayed at the mean box, about 5 %
    (docs/glipv2_xvlm.md).

    Args:
        channels: width of the fused image levels (C); language_dim: width of the text (D).
        strides: strides of the levels used.
        num_heads: attention heads; hidden: attention / MLP width (a multiple of num_heads).
        position_freqs: Fourier frequencies per coordinate.
        l1_weight, giou_weight: loss weights.
        position_in: ``"values"`` or ``"keys"`` (above).
    """

    @configurable
    def __init__(
        self,
        *,
        channels: int,
        language_dim: int,
        strides: Sequence[int] = (8, 16, 32),
        num_heads: int = 4,
        hidden: int = 256,
        position_freqs: int = 8,
        l1_weight: float = 1.0,
        giou_weight: float = 1.0,
        position_in: str = "values",
    ):
        super().__init__()
        if position_in not in ("values", "keys"):
            raise ValueError(
                f"MODEL.GLIP.TEXT_BOX_HEAD.POSITION_IN must be 'values' or 'keys', got {position_in!r}."
            )
        if num_heads < 1 or hidden < 1:
            raise ValueError(
                f"MODEL.GLIP.TEXT_BOX_HEAD.NUM_HEADS ({num_heads}) and HIDDEN_DIM ({hidden}) must "
                "be >= 1 (HIDDEN_DIM a multiple of NUM_HEADS; defaults 4 and 256)."
            )
        for key, weight in (("L1_WEIGHT", l1_weight), ("GIOU_WEIGHT", giou_weight)):
            check_loss_weight(f"MODEL.GLIP.TEXT_BOX_HEAD.{key}", weight,
                              "it multiplies that box loss (0 turns it off; X-VLM uses 1).")
        if hidden % num_heads:
            raise ValueError(
                f"MODEL.GLIP.TEXT_BOX_HEAD.HIDDEN_DIM ({hidden}) must be a multiple of NUM_HEADS ({num_heads})."
            )
        self.strides = list(strides)
        self.position_freqs, self.position_in, self.num_heads = position_freqs, position_in, num_heads
        self.query = nn.Linear(language_dim, hidden)
        self.key = nn.Linear(channels, hidden)
        self.value = nn.Linear(channels, hidden)
        self.position = nn.Linear(4 * position_freqs, hidden)
        self.level = nn.Embedding(len(self.strides), hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 4),
        )
        self.weights = {"loss_text_box_l1": l1_weight, "loss_text_box_giou": giou_weight}

    @classmethod
    def from_config(cls, cfg, language_dim: int):
        t = cfg.MODEL.GLIP.TEXT_BOX_HEAD
        return dict(
            channels=cfg.MODEL.DYHEAD.CHANNELS,
            language_dim=language_dim,
            strides=tower_level_strides(cfg, t.NUM_LEVELS, "MODEL.GLIP.TEXT_BOX_HEAD.NUM_LEVELS"),
            num_heads=t.NUM_HEADS,
            hidden=t.HIDDEN_DIM,
            l1_weight=t.L1_WEIGHT,
            giou_weight=t.GIOU_WEIGHT,
            position_in=t.POSITION_IN,
        )

    def forward(self, visual: List[torch.Tensor], text: torch.Tensor, text_mask: torch.Tensor,
                image_sizes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        del text_mask  # the [CLS] feature already attended to the prompt's real tokens
        keys, values, valid = [], [], []
        for lvl, (v, stride) in enumerate(zip(visual, self.strides)):
            b, _, h, w = v.shape
            pos, inside = zip(*[
                _position_features(h, w, stride, s, self.position_freqs, v.device) for s in image_sizes
            ])
            cells = v.float().flatten(2).transpose(1, 2)  # (B, H*W, C)
            place = self.position(torch.stack(pos))
            k = self.key(cells) + self.level.weight[lvl]
            keys.append(k + place if self.position_in == "keys" else k)
            values.append(self.value(cells) + place)
            valid.append(torch.stack(inside))
        keys, values, valid = torch.cat(keys, 1), torch.cat(values, 1), torch.cat(valid, 1)
        q = self.query(text[:, 0].float())  # (B, hidden): the [CLS] token
        attended, _ = self.attend(q, keys, values, valid)
        return self.mlp(self.norm(q + self.out(attended))).sigmoid()

    def attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor):
        """Multi-head scaled dot-product attention of one query per image.

        Args:
            q: (B, D); keys, values: (B, N, D); valid: (B, N) cells inside the image.
        Returns:
            (B, D) attended values and (B, heads, N) attention weights.
        """
        b, n, d = keys.shape
        heads = self.num_heads
        logits = torch.einsum("bhd,bnhd->bhn", q.view(b, heads, -1), keys.view(b, n, heads, -1))
        logits = logits / math.sqrt(d // heads)
        weights = logits.masked_fill(~valid[:, None], float("-inf")).softmax(-1)
        attended = torch.einsum("bhn,bnhd->bhd", weights, values.view(b, n, heads, -1))
        return attended.reshape(b, d), weights

    def losses(self, pred: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Weighted :func:`text_box_losses`; pred, target (N, 4) normalised (cx, cy, w, h)."""
        return {k: v * self.weights[k] for k, v in text_box_losses(pred, target).items()}
