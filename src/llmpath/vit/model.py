"""The Vision Transformer (ViT): an image read as a sequence of patches by the Transformer's encoder.

    llmpath vit train --preset=small            # mnist-5k; docs/tutorials/07_vit.md

Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words" (https://arxiv.org/abs/2010.11929). Cut the
(C, H, W) image into a grid of p x p patches, flatten each into C*p*p numbers and project it linearly to
n_embd: the patches are the tokens. Prepend a learned [CLS] token, add a position encoding (learned, fixed
2-D sin-cos, or none), run pre-LN encoder layers (the Transformer stage's EncoderLayer, imported) and a
final LayerNorm, and classify from the [CLS] output (or from the mean of the patch outputs).

Two ways to cut patches, equal to rounding: `patchify` (reshape and permute: the idea) followed by a
linear layer, and a Conv2d whose kernel and stride are the patch size (the usual implementation). Both share
the same weights (the Conv2d's), so `patch_embed.mode` switches between them. On a CPU the reshape + linear is
the faster one (forward + backward of the patch embedding about 3x faster at our sizes, though only ~2% of a
whole training step; benchmarks/README.md), so it is the default. With `pos="learned"`, `pool="cls"` and exact GELU this
is Hugging Face's ViTForImageClassification, tensor for tensor (vit/hf.py copies the weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmpath.config import ConfigError, check_heads, opt
from llmpath.transformer.model import EncoderLayer, TransformerConfig


@dataclass
class ViTConfig:
    image_size: int = opt(28, "height and width of the (square) input images", min=1)
    channels: int = opt(1, "input channels (1 grey, 3 RGB)", min=1)
    n_classes: int = opt(10, "classes (set from the data)", min=2)
    patch_size: int = opt(7, "side of a square patch; must divide image_size (0 = a 4x4 grid where it divides, "
                          "set from the data by a run)", min=0)
    n_layer: int = opt(4, "encoder layers", min=1)
    n_head: int = opt(4, "attention heads (must divide n_embd)", min=1)
    n_embd: int = opt(64, "width of the token stream", min=1)
    n_ff: int = opt(128, "inner width of the feed-forward", min=1)
    dropout: float = opt(0.0, "dropout on embeddings, attention weights and residual branches", min=0, below=1)
    pos: Literal["learned", "sincos2d", "none"] = opt("learned", "position encoding: learned 1-D table, fixed 2-D sin-cos, none")
    pool: Literal["cls", "mean"] = opt("cls", "classify from the [CLS] token or from the mean of the patch outputs (no [CLS])")
    patchify: Literal["unfold", "conv"] = opt("unfold", "cut patches by reshape + linear (the idea; on a CPU also the faster "
                                             "one to train) or by a strided Conv2d")
    layer_norm_eps: float = opt(1e-12, "LayerNorm epsilon (Hugging Face ViT's default)", above=0)
    sdpa: bool = opt(True, "attention through F.scaled_dot_product_attention (false: hand-written, gives attention maps)")

    def check(self) -> None:
        check_heads(self.n_head, self.n_embd)
        if self.patch_size and self.image_size % self.patch_size:
            raise ConfigError(f"--patch_size={self.patch_size} does not divide --image_size={self.image_size}; "
                              f"choose a divisor (e.g. {', '.join(str(d) for d in _divisors(self.image_size))})")
        if self.pos == "sincos2d" and self.n_embd % 4:
            raise ConfigError(f"2-D sin-cos positions need n_embd divisible by 4 (sin and cos for rows and columns); "
                              f"got --n_embd={self.n_embd}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size  # patches per side

    @property
    def n_patches(self) -> int:
        return self.grid ** 2


def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n) if n % d == 0]


def auto_patch_size(image_size: int, grid: int = 4) -> int:
    """The divisor of image_size closest to image_size / grid: 28 -> 7 (4x4 patches), 8 -> 2, 32 -> 8."""
    return min(_divisors(image_size) or [1], key=lambda d: (abs(image_size / d - grid), d))


def encoder_config(cfg: ViTConfig) -> TransformerConfig:
    """The Transformer stage's layer options that make its EncoderLayer a ViT layer: pre-LN, GELU, biases."""
    return TransformerConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, n_ff=cfg.n_ff,
                             dropout=cfg.dropout, bias=True, norm="pre", activation="gelu",
                             sdpa=cfg.sdpa, layer_norm_eps=cfg.layer_norm_eps)


# ----------------------------------------------------------------------------- patches

def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, N, C*p*p): row-major grid of patches, each flattened channel, row, column.

    Split H into (H/p, p) and W into (W/p, p), bring the two grid axes to the front, flatten the rest:
    the same order as Conv2d's weight (out, C, p, p), so one linear map equals the strided convolution.
    """
    B, C, H, W = x.shape
    x = x.view(B, C, H // p, p, W // p, p)  # (B, C, gh, p, gw, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(patches: Tensor, p: int, channels: int) -> Tensor:
    """The inverse of patchify: (B, N, C*p*p) -> (B, C, H, W) for a square grid."""
    B, N, _ = patches.shape
    g = math.isqrt(N)
    x = patches.view(B, g, g, channels, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, g, p, g, p)
    return x.reshape(B, channels, g * p, g * p)


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, N, n_embd): a linear projection of every p x p patch, by Conv2d or by patchify."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.p, self.mode = cfg.patch_size, cfg.patchify
        self.proj = nn.Conv2d(cfg.channels, cfg.n_embd, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "unfold":  # the idea: patches as vectors, then one shared linear layer
            return F.linear(patchify(x, self.p), self.proj.weight.flatten(1), self.proj.bias)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, n_embd, gh, gw) -> (B, N, n_embd)


# ------------------------------------------------------------------------ positions

def sincos_1d(pos: Tensor, dim: int) -> Tensor:
    """(P,) positions -> (P, dim): sin in the first half, cos in the second, frequencies 1/10000^(i/(dim/2))."""
    freq = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    angle = pos.float()[:, None] * freq  # (P, dim/2)
    return torch.cat([torch.sin(angle), torch.cos(angle)], 1)


def sincos_2d(grid: int, dim: int) -> Tensor:
    """(grid*grid, dim) fixed 2-D encoding: half the channels say the row, half the column (row-major patches)."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([sincos_1d(rows.flatten(), dim // 2), sincos_1d(cols.flatten(), dim // 2)], 1)


# ---------------------------------------------------------------------------- model

class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        cfg.check()
        if cfg.patch_size == 0:
            raise ValueError("patch_size=0 (automatic) is resolved from the images by a run; give a patch size")
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        n_tokens = cfg.n_patches + (cfg.pool == "cls")
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.n_embd)) if cfg.pool == "cls" else None
        if cfg.pos == "learned":
            self.pos = nn.Parameter(torch.zeros(1, n_tokens, cfg.n_embd))
        else:  # sincos2d: a fixed buffer ([CLS] gets no position); none: zeros
            pe = sincos_2d(cfg.grid, cfg.n_embd) if cfg.pos == "sincos2d" else torch.zeros(cfg.n_patches, cfg.n_embd)
            pe = torch.cat([torch.zeros(n_tokens - cfg.n_patches, cfg.n_embd), pe])[None]
            self.register_buffer("pos", pe, persistent=False)
            self.pos: Tensor
        self.drop = nn.Dropout(cfg.dropout)
        enc = encoder_config(cfg)
        self.layers = nn.ModuleList(EncoderLayer(enc) for _ in range(cfg.n_layer))
        self.norm = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(cfg.n_embd, cfg.n_classes)
        self.apply(_init)
        if self.cls is not None:
            nn.init.trunc_normal_(self.cls, std=0.02)
        if cfg.pos == "learned":
            nn.init.trunc_normal_(self.pos, std=0.02)

    def tokens(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, T, n_embd): patch embeddings, [CLS] first (pool="cls"), plus positions."""
        if x.shape[1:] != (self.cfg.channels, self.cfg.image_size, self.cfg.image_size):
            raise ValueError(f"images of shape {tuple(x.shape[1:])}, the model expects "
                             f"({self.cfg.channels}, {self.cfg.image_size}, {self.cfg.image_size})")
        h = self.patch_embed(x)  # (B, N, C)
        if self.cls is not None:
            h = torch.cat([self.cls.expand(len(x), -1, -1), h], 1)  # (B, 1 + N, C)
        return self.drop(h + self.pos)

    def features(self, x: Tensor, maps: list | None = None) -> Tensor:
        """(B, T, n_embd) after the encoder and the final LayerNorm; `maps` collects (B, nh, T, T) per layer."""
        h = self.tokens(x)
        for layer in self.layers:
            h = layer(h, None, maps)
        return self.norm(h)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> logits (B, n_classes)."""
        h = self.features(x)
        return self.head(h[:, 0] if self.cfg.pool == "cls" else h.mean(1))

    @torch.no_grad()
    def attention_maps(self, x: Tensor) -> list[Tensor]:
        """The attention weights of every layer, (B, n_head, T, T) each (hand-written attention, eval mode)."""
        maps: list[Tensor] = []
        self.features(x, maps)
        return maps


def _init(m: nn.Module) -> None:
    """Truncated-normal(0.02) weights, zero biases, unit LayerNorms: Hugging Face ViT's initialisation."""
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def attention_rollout(maps: list[Tensor], residual: bool = True) -> Tensor:
    """Abnar & Zuidema 2020: multiply the head-averaged attention of the layers, each mixed half-and-half with
    the identity (the residual path), rows renormalised. maps: (B, nh, T, T) per layer -> (B, T, T): how much
    each output token draws on each input token through the whole stack."""
    out = None
    for a in maps:
        a = a.mean(1)  # (B, T, T)
        if residual:
            a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], device=a.device)
            a = a / a.sum(-1, keepdim=True)
        out = a if out is None else a @ out
    return out


def classification_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)
