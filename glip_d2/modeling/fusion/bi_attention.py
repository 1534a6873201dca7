"""X-MHA: bidirectional cross-attention between all FPN positions and all tokens (GLIP's VLFuse)."""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

# fp16 has a max of 65504: attention logits are clamped inside this range (official GLIP).
CLAMP_VALUE = 50000.0
# Additive mask for padding tokens on the vision->language side (official value).
PADDING_LOGIT = -9e15
# Implementations of the attention products: "official" materialises the (N, T) logits once and
# applies GLIP's clamps (bit-for-bit parity); "sdpa" runs each direction through PyTorch's
# scaled_dot_product_attention (flash / memory-efficient kernels on GPU, fp32 accumulation), which
# equals the official math wherever the +-50000 clamps do not bind.
ATTENTION_IMPLS = ("official", "sdpa")


class BiMultiHeadAttention(nn.Module):
    """Multi-head attention in both directions, sharing one query-key product.

    Vision queries attend over tokens (padding masked out); token queries attend over all
    visual positions (no mask: every position is real). `impl` picks the kernels (see
    ``ATTENTION_IMPLS``).
    """

    def __init__(
        self,
        v_dim: int,
        l_dim: int,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.1,
        clamp_min: bool = True,
        clamp_max: bool = True,
        impl: str = "official",
    ):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"Unknown X-MHA attention implementation {impl!r} "
                f"(MODEL.DYHEAD.FUSE_CONFIG.ATTENTION); use one of {ATTENTION_IMPLS}."
            )
        self.impl = impl
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.clamp_min = clamp_min
        self.clamp_max = clamp_max
        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        for lin in [self.v_proj, self.l_proj, self.values_v_proj, self.values_l_proj,
                    self.out_v_proj, self.out_l_proj]:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # (B, N, E) -> (B * heads, N, head_dim)
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2).reshape(
            b * self.num_heads, n, self.head_dim
        )

    def _clamp(self, x: torch.Tensor) -> torch.Tensor:
        if self.clamp_min:
            x = x.clamp(min=-CLAMP_VALUE)
        if self.clamp_max:
            x = x.clamp(max=CLAMP_VALUE)
        return x

    def forward(
        self, v: torch.Tensor, l: torch.Tensor, mask_l: torch.Tensor = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            v: (B, N, v_dim) visual tokens. l: (B, T, l_dim) text tokens.
            mask_l: (B, T) attention mask, 1 for real tokens, 0 for padding.
        Returns:
            (delta_v (B, N, v_dim), delta_l (B, T, l_dim))
        """
        if self.impl == "sdpa":
            return self._forward_sdpa(v, l, mask_l)
        bsz, n_v, _ = v.shape
        n_l = l.shape[1]
        q = self._heads(self.v_proj(v) * self.scale)
        k = self._heads(self.l_proj(l))
        val_v = self._heads(self.values_v_proj(v))
        val_l = self._heads(self.values_l_proj(l))

        logits = self._clamp(torch.bmm(q, k.transpose(1, 2)))  # (B*h, N, T)
        # language -> vision: stable softmax over visual positions.
        logits_l = logits.transpose(1, 2)
        logits_l = self._clamp(logits_l - logits_l.max(dim=-1, keepdim=True)[0])
        probs_l = logits_l.softmax(dim=-1)

        if mask_l is not None:
            # Official quirk kept for parity: real tokens get +1 (a softmax no-op), padding -9e15.
            # -9e15 overflows fp16: there padding gets the dtype's lowest value, set rather than
            # added (-65504 added to a logit clamped to +-50000 could leave it at -15504, above
            # real tokens near -50000), so padding still gets probability exactly 0.
            pad = max(PADDING_LOGIT, torch.finfo(logits.dtype).min)
            m = mask_l[:, None, None, :]
            logits = (logits.view(bsz, self.num_heads, n_v, n_l) + m.to(logits.dtype))
            logits = logits.masked_fill(m == 0, pad).view(bsz * self.num_heads, n_v, n_l)
        probs_v = logits.softmax(dim=-1)

        probs_v = F.dropout(probs_v, p=self.dropout, training=self.training)
        probs_l = F.dropout(probs_l, p=self.dropout, training=self.training)
        out_v = torch.bmm(probs_v, val_l)  # (B*h, N, hd)
        out_l = torch.bmm(probs_l, val_v)  # (B*h, T, hd)
        out_v = out_v.view(bsz, self.num_heads, n_v, self.head_dim).transpose(1, 2)
        out_l = out_l.view(bsz, self.num_heads, n_l, self.head_dim).transpose(1, 2)
        out_v = self.out_v_proj(out_v.reshape(bsz, n_v, self.embed_dim))
        out_l = self.out_l_proj(out_l.reshape(bsz, n_l, self.embed_dim))
        return out_v, out_l

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # (B, N, E) -> (B, heads, N, head_dim)
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = x.shape
        return x.transpose(1, 2).reshape(b, n, self.embed_dim)

    def _forward_sdpa(self, v, l, mask_l):
        """Both directions as scaled_dot_product_attention calls on the same projections.

        vision -> language: softmax over tokens of scale * <v_proj(v), l_proj(l)>, padding
        masked (the official +1 on real tokens is a softmax no-op). language -> vision: softmax
        over all positions of the same products, transposed.
        """
        qv, kl = self._split(self.v_proj(v)), self._split(self.l_proj(l))
        val_v, val_l = self._split(self.values_v_proj(v)), self._split(self.values_l_proj(l))
        p = self.dropout if self.training else 0.0
        mask = None if mask_l is None else (mask_l != 0)[:, None, None, :]  # (B, 1, 1, T)
        out_v = F.scaled_dot_product_attention(
            qv, kl, val_l, attn_mask=mask, dropout_p=p, scale=self.scale
        )
        out_l = F.scaled_dot_product_attention(kl, qv, val_v, dropout_p=p, scale=self.scale)
        return self.out_v_proj(self._merge(out_v)), self.out_l_proj(self._merge(out_l))


class VLFuse(nn.Module):
    """Pre-LayerNorm bidirectional fusion with layer scale; residual on the normalised input."""

    def __init__(
        self,
        v_dim: int,
        l_dim: int,
        embed_dim: int = 2048,
        num_heads: int = 8,
        dropout: float = 0.1,
        init_scale: float = 1.0 / 6,
        clamp_min: bool = True,
        clamp_max: bool = True,
        attention: str = "official",
    ):
        super().__init__()
        self.norm_v = nn.LayerNorm(v_dim)
        self.norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(
            v_dim, l_dim, embed_dim, num_heads, dropout, clamp_min, clamp_max, impl=attention
        )
        self.gamma_v = nn.Parameter(torch.full((v_dim,), float(init_scale)))
        self.gamma_l = nn.Parameter(torch.full((l_dim,), float(init_scale)))

    def forward(
        self, visual: List[torch.Tensor], lang: torch.Tensor, mask_l: torch.Tensor
    ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """visual: per-level (B, C, H, W); lang: (B, T, D). Returns the same structure."""
        shapes = [f.shape[-2:] for f in visual]
        v = torch.cat([f.flatten(2).transpose(1, 2) for f in visual], dim=1)  # (B, sum HW, C)
        v = self.norm_v(v)
        l = self.norm_l(lang)
        dv, dl = self.attn(v, l, mask_l)
        v = v + self.gamma_v * dv
        l = l + self.gamma_l * dl
        v = v.transpose(1, 2)
        out, start = [], 0
        for h, w in shapes:
            out.append(v[:, :, start : start + h * w].reshape(v.shape[0], -1, h, w))
            start += h * w
        return out, l
