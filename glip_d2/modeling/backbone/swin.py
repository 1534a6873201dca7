"""Swin Transformer image backbone with the numerics of GLIP's `swint.py` (Swin v1).

The forward pass repeats the official operation order (pad to window multiples, cyclic shift with
a -100 attention mask, relative position bias, PatchMerging with odd-size padding, a LayerNorm per
returned stage), so features match the official model to float rounding. Submodule names follow
the standard Swin layout (`patch_embed`, `layers.{i}.blocks.{j}`, `layers.{i}.downsample`,
`norm{i}`), so an official checkpoint maps by a prefix (see `swin_fpn.OFFICIAL_BACKBONE_KEY_MAP`).
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

__all__ = ["SwinTransformer", "build_swin_backbone"]


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep_prob)
        if keep_prob > 0.0:  # drop_prob 1 drops every sample (0 / 0 would make it NaN)
            mask.div_(keep_prob)
        return x * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of window_size -> (B * nW, window_size, window_size, C)."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nW, ws, ws, C) -> (B, H, W, C)."""
    B = windows.shape[0] // ((H // window_size) * (W // window_size))
    x = windows.view(B, H // window_size, W // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


def relative_position_index(window_size: int) -> torch.Tensor:
    """(ws*ws, ws*ws) int64 index into the (2*ws-1)^2 relative position bias table."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(
        1
    )  # (2, ws*ws)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()  # (N, N, 2)
    rel[:, :, 0] += window_size - 1
    rel[:, :, 1] += window_size - 1
    rel[:, :, 0] *= 2 * window_size - 1
    return rel.sum(-1)


def shifted_window_mask(
    Hp: int, Wp: int, window_size: int, shift_size: int, device, dtype
) -> torch.Tensor:
    """(nW, ws*ws, ws*ws) additive mask: -100 between tokens of different regions after the shift.

    -100 (not -inf) is what the official model adds; it matters only through rounding but keeps
    the numerics identical.
    """
    img_mask = torch.zeros((1, Hp, Wp, 1), device=device, dtype=dtype)
    slices = (
        slice(0, -window_size),
        slice(-window_size, -shift_size),
        slice(-shift_size, None),
    )
    region = 0
    for h in slices:
        for w in slices:
            img_mask[:, h, w, :] = region
            region += 1
    mask_windows = window_partition(img_mask, window_size).view(-1, window_size * window_size)
    mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: (B * nW, N, C) tokens of each window, N = window_size ** 2.
            mask: (nW, N, N) additive mask for shifted windows, or None.
        """
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B_, nH, N, hd)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B_, nH, N, N)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(N, N, -1).permute(2, 0, 1).contiguous()  # (nH, N, N)
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention + MLP, both pre-norm residual branches with stochastic depth."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        drop_path: float,
    ):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size), got {shift_size}")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, H: int, W: int, attn_mask: torch.Tensor) -> torch.Tensor:
        """x: (B, H*W, C); attn_mask: the stage's shifted-window mask (used if shifted)."""
        B, L, C = x.shape
        if L != H * W:
            raise ValueError(f"Swin block got {L} tokens for a {H}x{W} map")
        ws = self.window_size
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        # Pad bottom/right to window multiples (after the norm, as the official model does).
        pad_r = (ws - W % ws) % ws
        pad_b = (ws - H % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = x.shape[1], x.shape[2]
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            mask = attn_mask
        else:
            mask = None
        windows = window_partition(x, ws).view(-1, ws * ws, C)
        windows = self.attn(windows, mask=mask).view(-1, ws, ws, C)
        x = window_reverse(windows, ws, Hp, Wp)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        if pad_r > 0 or pad_b > 0:
            x = x[:, :H, :W, :].contiguous()
        x = shortcut + self.drop_path(x.view(B, H * W, C))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (zero-padding odd sizes) -> LayerNorm -> Linear(4C, 2C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, L, C = x.shape
        x = x.view(B, H, W, C)
        if H % 2 == 1 or W % 2 == 1:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        # Concatenation order (0,0), (1,0), (0,1), (1,1) fixes the layout of `reduction.weight`.
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        x = x.view(B, -1, 4 * C)  # (B, ceil(H/2) * ceil(W/2), 4C)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Blocks of one resolution (alternating plain and shifted windows) + optional PatchMerging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_path: Sequence[float],
        downsample: bool,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.use_checkpoint = False
        self.blocks = nn.ModuleList(
            [
                SwinTransformerBlock(
                    dim,
                    num_heads,
                    window_size,
                    shift_size=0 if i % 2 == 0 else window_size // 2,
                    mlp_ratio=mlp_ratio,
                    drop_path=drop_path[i],
                )
                for i in range(depth)
            ]
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(
        self, x: torch.Tensor, H: int, W: int
    ) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
        """x: (B, H*W, C). Returns (stage output, input of next stage, next H, next W)."""
        ws = self.window_size
        Hp, Wp = math.ceil(H / ws) * ws, math.ceil(W / ws) * ws
        attn_mask = shifted_window_mask(Hp, Wp, ws, self.shift_size, x.device, x.dtype)
        checkpointing = self.use_checkpoint and self.training and torch.is_grad_enabled()
        for blk in self.blocks:
            if checkpointing:
                x = torch.utils.checkpoint.checkpoint(blk, x, H, W, attn_mask, use_reentrant=False)
            else:
                x = blk(x, H, W, attn_mask)
        if self.downsample is None:
            return x, x, H, W
        return x, self.downsample(x, H, W), (H + 1) // 2, (W + 1) // 2


class PatchEmbed(nn.Module):
    """Non-overlapping patch_size x patch_size conv (input zero-padded to a multiple) + LayerNorm."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C, ceil(H / p), ceil(W / p))."""
        p = self.patch_size
        H, W = x.shape[-2:]
        if W % p != 0:
            x = F.pad(x, (0, p - W % p))
        if H % p != 0:
            x = F.pad(x, (0, 0, 0, p - H % p))
        x = self.proj(x)
        B, C, Wh, Ww = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).reshape(B, C, Wh, Ww)


class SwinTransformer(Backbone):
    """Swin Transformer (v1) as a Detectron2 backbone.

    Returns {"stage2": stride 4, C; "stage3": stride 8, 2C; "stage4": 16, 4C; "stage5": 32, 8C},
    restricted to `out_features`, each after its own LayerNorm `norm{i}` (i = stage - 2).
    GLIP's SWINT-FPN-RETINANET computes stage2 without a norm and never uses it; asking for
    "stage2" here adds a LayerNorm `norm0`, as in the standard Swin detection backbone.
    """

    @configurable
    def __init__(
        self,
        *,
        in_chans: int = 3,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        ape: bool = False,
        pretrain_img_size: int = 224,
        out_features: Sequence[str] = ("stage3", "stage4", "stage5"),
        freeze_at: int = -1,
        use_checkpoint: bool = False,
    ):
        """
        Args:
            in_chans: input image channels.
            patch_size: patch embedding stride (4 in every released Swin).
            embed_dim: width C of the first stage; stage i has C * 2**i.
            depths: blocks per stage.
            num_heads: attention heads per stage.
            window_size: side of the attention window.
            mlp_ratio: MLP hidden width / block width.
            drop_path_rate: stochastic depth rate of the last block, in [0, 1]; it rises
                linearly from 0.
            ape: add an absolute position embedding (learned at `pretrain_img_size`, resized
                bicubically to the input).
            pretrain_img_size: image size the absolute position embedding was learned at.
            out_features: subset of "stage2".."stage5" to return.
            freeze_at: -1 or 0 trains everything; 1 freezes the patch embedding (and APE);
                n >= 2 also freezes the first n - 1 stages (their blocks and PatchMerging).
                Frozen parts get requires_grad=False and stay in eval mode (no stochastic
                depth), as in the official `_freeze_stages`.
            use_checkpoint: recompute each trainable block in the backward pass
                (`torch.utils.checkpoint`, non-reentrant) to save activation memory.

        Raises:
            ValueError: for depths and num_heads of different lengths, a window size below 1, a
                drop path rate outside [0, 1], a head count that does not divide its stage's
                width, or out_features that are not stage names.
        """
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(
                f"depths {list(depths)} and num_heads {list(num_heads)} differ in length"
            )
        num_stages = len(depths)
        if window_size < 1:
            raise ValueError(f"MODEL.SWIN.WINDOW_SIZE must be >= 1, got {window_size}")
        if not 0.0 <= drop_path_rate <= 1.0:
            raise ValueError(
                f"MODEL.SWIN.DROP_PATH_RATE must be in [0, 1] (a probability), got {drop_path_rate}"
            )
        for i, heads in enumerate(num_heads):
            width = embed_dim * 2**i
            if heads < 1 or width % heads != 0:
                raise ValueError(
                    f"MODEL.SWIN.NUM_HEADS[{i}] = {heads} does not divide the width {width} of "
                    f"stage{i + 2} (EMBED_DIM {embed_dim} * 2**{i}); choose head counts that "
                    "divide it (Swin-T: EMBED_DIM 96, NUM_HEADS [3, 6, 12, 24])"
                )
        stage_names = [f"stage{i + 2}" for i in range(num_stages)]
        unknown = [f for f in out_features if f not in stage_names]
        if unknown or not out_features:
            raise ValueError(f"out_features {list(out_features)} must be a subset of {stage_names}")

        self.num_features = [embed_dim * 2**i for i in range(num_stages)]
        self.ape = ape
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        if ape:
            res = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, res, res))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)

        # Stochastic depth rises linearly over all blocks (computed exactly as the official code).
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths), device="cpu")]
        self.layers = nn.ModuleList()
        for i in range(num_stages):
            start = sum(depths[:i])
            self.layers.append(
                SwinStage(
                    dim=self.num_features[i],
                    depth=depths[i],
                    num_heads=num_heads[i],
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    drop_path=dpr[start : start + depths[i]],
                    downsample=i < num_stages - 1,
                )
            )

        self._out_features = [f for f in stage_names if f in out_features]
        self._out_feature_channels = {}
        self._out_feature_strides = {}
        for i, name in enumerate(stage_names):
            if name in self._out_features:
                self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
                self._out_feature_channels[name] = self.num_features[i]
                self._out_feature_strides[name] = patch_size * 2**i
        # Stages after the last requested one are built (so checkpoints load) but not run.
        self._num_run_stages = stage_names.index(self._out_features[-1]) + 1

        self.apply(_init_swin_weights)
        self.freeze_at = freeze_at
        self._freeze()
        for i, layer in enumerate(self.layers):
            layer.use_checkpoint = use_checkpoint and not self._stage_frozen(i)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        return {
            "in_chans": input_shape.channels,
            "embed_dim": cfg.MODEL.SWIN.EMBED_DIM,
            "depths": cfg.MODEL.SWIN.DEPTHS,
            "num_heads": cfg.MODEL.SWIN.NUM_HEADS,
            "window_size": cfg.MODEL.SWIN.WINDOW_SIZE,
            "mlp_ratio": cfg.MODEL.SWIN.MLP_RATIO,
            "drop_path_rate": cfg.MODEL.SWIN.DROP_PATH_RATE,
            "ape": cfg.MODEL.SWIN.APE,
            "out_features": cfg.MODEL.SWIN.OUT_FEATURES,
            "freeze_at": cfg.MODEL.SWIN.FREEZE_AT,
            "use_checkpoint": cfg.MODEL.SWIN.USE_CHECKPOINT,
        }

    def _stage_frozen(self, i: int) -> bool:
        return self.freeze_at >= 2 and i < self.freeze_at - 1

    def _frozen_modules(self) -> List[nn.Module]:
        modules = []
        if self.freeze_at >= 1:
            modules.append(self.patch_embed)
        modules += [layer for i, layer in enumerate(self.layers) if self._stage_frozen(i)]
        return modules

    def _freeze(self):
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad = False
        if self.freeze_at >= 1 and self.ape:
            self.absolute_pos_embed.requires_grad = False

    def train(self, mode: bool = True):
        """Switch mode but keep the frozen parts in eval mode."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: (B, C_in, H, W) normalized images; any H, W (padded internally).

        Returns:
            dict "stageN" -> (B, C_N, ceil(H / stride), ceil(W / stride)).
        """
        x = self.patch_embed(x)  # (B, C, Wh, Ww)
        H, W = x.shape[-2:]
        if self.ape:
            pos = F.interpolate(self.absolute_pos_embed, size=(H, W), mode="bicubic")
            x = x + pos
        x = x.flatten(2).transpose(1, 2)  # (B, H*W, C)

        outputs = {}
        for i in range(self._num_run_stages):
            out, x, H_next, W_next = self.layers[i](x, H, W)
            name = f"stage{i + 2}"
            if name in self._out_features:
                out = getattr(self, f"norm{i}")(out)
                C = self.num_features[i]
                outputs[name] = out.view(-1, H, W, C).permute(0, 3, 1, 2).contiguous()
            H, W = H_next, W_next
        return outputs


def _init_swin_weights(m: nn.Module):
    # The Swin paper's initialisation; any pretrained checkpoint overwrites it.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


@BACKBONE_REGISTRY.register()
def build_swin_backbone(cfg, input_shape: ShapeSpec):
    """Swin Transformer from `cfg.MODEL.SWIN.*` (no FPN)."""
    return SwinTransformer(cfg, input_shape)
