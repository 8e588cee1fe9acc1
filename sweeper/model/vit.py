"""The DINOv2 Vision Transformer in plain torch: the architecture only (registry and weights: `sweeper.model.backbone`).

It reproduces the hub models (`torch.hub.load("facebookresearch/dinov2",
"dinov2_vits14")`): same state-dict keys, so Meta's `*_pretrain.pth` files load
with strict=True, and the same position-embedding interpolation, so non-square
inputs such as 266x476 give the same tokens. It was written from a reading of
Meta's code, not copied; tests/model/test_backbone.py checks it against Meta's package.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class VitShape(Protocol):
    """The shape fields `build_vit` reads (a `sweeper.model.backbone.BackboneSpec` has them)."""

    @property
    def embed_dim(self) -> int: ...

    @property
    def depth(self) -> int: ...

    @property
    def num_heads(self) -> int: ...

    @property
    def patch_size(self) -> int: ...

    @property
    def img_size(self) -> int: ...

    @property
    def mlp_ratio(self) -> float: ...


# LayerScale gamma for random weights. Meta trains from 1e-5, which makes every block
# an identity at init: an untrained backbone would then output LayerNorm(patch
# embedding), a linear map of each patch alone. 1.0 (what the hub constructor
# passes) lets attention and the MLP add their full, mixing contribution, so the
# random tokens exercise the same code paths as real ones.
_RANDOM_LAYERSCALE = 1.0
_INIT_STD = 0.02  # ViT/timm convention for weights, pos_embed and cls_token

# Meta adds 0.1 to the target grid before turning it into a bicubic scale factor
# (an old guard against float round-off, dino issue #8). The factor also sets the
# sampling positions, so the offset changes the values, not just the size; the
# hub models keep it (interpolate_offset=0.1) and so do we.
_POS_INTERP_OFFSET = 0.1


class PatchEmbed(nn.Module):
    """Cut the image into non-overlapping patches and project each to a token."""

    def __init__(self, *, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, H/p * W/p, D), row-major over the patch grid
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention through torch's fused scaled_dot_product_attention."""

    def __init__(self, *, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # default scale 1/sqrt(head_dim), as Meta's
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class LayerScale(nn.Module):
    """Per-channel learned scale on a residual branch (CaiT)."""

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """Two linear layers with an exact (erf) GELU between them."""

    def __init__(self, *, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches."""

    def __init__(self, *, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)  # DINOv2 uses 1e-6, not torch's 1e-5
        self.attn = Attention(dim=dim, num_heads=num_heads)
        self.ls1 = LayerScale(dim=dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim=dim, hidden_dim=int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    """A DINOv2 ViT whose state dict has the key names and shapes of Meta's hub checkpoints."""

    def __init__(
        self,
        *,
        embed_dim: int,
        depth: int,
        num_heads: int,
        patch_size: int = 14,
        img_size: int = 518,
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.pos_grid = img_size // patch_size  # side of the square grid pos_embed was trained on
        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pos_grid**2, embed_dim))  # cls + grid
        # Only used by DINOv2's masked-image training; kept so checkpoints load strictly.
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.blocks = nn.ModuleList(
            Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    @torch.no_grad()
    def init_random(self, *, generator: torch.Generator, layerscale: float = _RANDOM_LAYERSCALE) -> None:
        """Fill every parameter with seeded random weights (truncated normal, std 0.02)."""

        def trunc_normal(t: torch.Tensor) -> None:
            # Normal(0, 0.02) cut at +-2 std by redrawing the outliers: the same distribution
            # as nn.init.trunc_normal_, whose inverse-erf sampling is ~15x slower on CPU
            # (seconds for ViT-L).
            flat = t.view(-1).normal_(0.0, _INIT_STD, generator=generator)
            redo = (flat.abs() > 2 * _INIT_STD).nonzero().squeeze(1)
            while redo.numel():
                draw = torch.empty(redo.numel()).normal_(0.0, _INIT_STD, generator=generator)
                flat[redo] = draw
                redo = redo[draw.abs() > 2 * _INIT_STD]

        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                trunc_normal(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, LayerScale):
                nn.init.constant_(module.gamma, layerscale)
        trunc_normal(self.pos_embed)
        trunc_normal(self.cls_token)
        nn.init.zeros_(self.mask_token)

    def interpolate_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """The position embedding (1, 1 + grid_h * grid_w, D) resampled the way Meta's hub models do it."""
        m = self.pos_grid
        if (grid_h, grid_w) == (m, m):
            return self.pos_embed  # Meta skips resampling only at the training grid
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        patch_pos = patch_pos.reshape(1, m, m, -1).permute(0, 3, 1, 2)
        # A scale factor (not an output size) with the 0.1 offset: torch then samples at
        # positions spaced m / (grid + 0.1) apart, which is what the pretrained model saw
        # downstream; passing size=(grid_h, grid_w) gives visibly different tokens.
        scale = ((grid_h + _POS_INTERP_OFFSET) / m, (grid_w + _POS_INTERP_OFFSET) / m)
        patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", align_corners=False)
        if patch_pos.shape[-2:] != (grid_h, grid_w):  # a float round-off the offset is meant to prevent
            raise RuntimeError(f"pos_embed resampled to {tuple(patch_pos.shape[-2:])}, wanted {(grid_h, grid_w)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat((cls_pos, patch_pos), dim=1).to(self.pos_embed.dtype)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the ViT; returns x_norm_clstoken (B,D), x_norm_patchtokens (B,N,D) and x_prenorm (B,1+N,D)."""
        b, _, h, w = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_embed(h // self.patch_size, w // self.patch_size)
        for block in self.blocks:
            tokens = block(tokens)
        normed = self.norm(tokens)
        return {
            "x_norm_clstoken": normed[:, 0],
            "x_norm_patchtokens": normed[:, 1:],
            "x_prenorm": tokens,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised class token, as the hub model's forward returns."""
        return self.forward_features(x)["x_norm_clstoken"]


def build_vit(spec: VitShape, *, seed: int | None = 0) -> DinoVisionTransformer:
    """A ViT of the spec's shape on CPU: seeded random weights, or uninitialised when seed is None."""
    # Built on the meta device so that no time goes into default inits that are
    # overwritten anyway (ViT-L has 300 M parameters).
    with torch.device("meta"):
        vit = DinoVisionTransformer(
            embed_dim=spec.embed_dim,
            depth=spec.depth,
            num_heads=spec.num_heads,
            patch_size=spec.patch_size,
            img_size=spec.img_size,
            mlp_ratio=spec.mlp_ratio,
        )
    vit.to_empty(device="cpu")
    if seed is not None:
        # A private generator: the global torch RNG (and so the head's init) is left alone.
        vit.init_random(generator=torch.Generator().manual_seed(seed))
    return vit
