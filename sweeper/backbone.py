"""The frozen DINOv2 backbone: a plain-torch ViT that loads Meta's hub checkpoints.

`create_backbone(name)` builds a registered architecture, resolves its weights
(a `--weights` file, else the torch hub cache, else a download) and wraps it in
a `FrozenBackbone` that maps normalised images to a grid of patch tokens.

The ViT reproduces the hub models (`torch.hub.load("facebookresearch/dinov2",
"dinov2_vits14")`): same state-dict keys, so Meta's `*_pretrain.pth` files load
with strict=True, and the same position-embedding interpolation, so non-square
inputs such as 266x476 give the same tokens. It was written from a reading of
Meta's code, not copied; tests/test_backbone.py checks it against Meta's package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pickle
import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from sweeper.errors import SweeperError

logger = logging.getLogger(__name__)

_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/{name}/{name}_pretrain.pth"


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackboneSpec:
    """One registered backbone: its ViT shape and where its weights come from."""

    name: str  # registry key, also used in feature-cache keys
    embed_dim: int  # channels of every token
    depth: int  # number of transformer blocks
    num_heads: int  # attention heads per block (embed_dim / num_heads = 64 for all DINOv2 models)
    patch_size: int = 14  # px per side of one patch token
    img_size: int = 518  # px; the pretraining size, so pos_embed holds a (518/14)^2 = 37x37 grid
    mlp_ratio: float = 4.0  # MLP hidden width / embed_dim
    checkpoint_url: str | None  # Meta's official state dict; None for seeded random weights
    pretrained: bool  # True: real learned weights; False: UNTRAINED random weights
    summary: str  # one line for --help and logs


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            name="dinov2_vits14",
            embed_dim=384,
            depth=12,
            num_heads=6,
            checkpoint_url=_DINOV2_URL.format(name="dinov2_vits14"),
            pretrained=True,
            summary="DINOv2 ViT-S/14, Meta's LVD-142M weights (phase 1's backbone)",
        ),
        BackboneSpec(
            name="dinov2_vitb14",
            embed_dim=768,
            depth=12,
            num_heads=12,
            checkpoint_url=_DINOV2_URL.format(name="dinov2_vitb14"),
            pretrained=True,
            summary="DINOv2 ViT-B/14, Meta's LVD-142M weights",
        ),
        BackboneSpec(
            name="dinov2_vitl14",
            embed_dim=1024,
            depth=24,
            num_heads=16,
            checkpoint_url=_DINOV2_URL.format(name="dinov2_vitl14"),
            pretrained=True,
            summary="DINOv2 ViT-L/14, Meta's LVD-142M weights",
        ),
        BackboneSpec(
            name="random_vits14",
            embed_dim=384,
            depth=12,
            num_heads=6,
            checkpoint_url=None,
            pretrained=False,
            summary="ViT-S/14 with UNTRAINED seeded random weights: offline smoke runs only, not real results",
        ),
    )
}

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


def build_vit(spec: BackboneSpec, *, seed: int | None = 0) -> DinoVisionTransformer:
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


def weights_digest(module: nn.Module) -> str:
    """First 16 hex chars of a sha256 over the state dict's names, dtypes, shapes and bytes, in key order."""
    sha = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        sha.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        sha.update(t.reshape(-1).view(torch.uint8).numpy())
    return sha.hexdigest()[:16]


def cache_path(spec: BackboneSpec) -> str:
    """Where torch hub keeps (or would keep) the spec's checkpoint: <hub dir>/checkpoints/<file name>."""
    if spec.checkpoint_url is None:
        raise SweeperError(f"backbone {spec.name} has no checkpoint file (its weights are seeded random)")
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(spec.checkpoint_url))


def download_checkpoint(url: str, dst: str) -> None:
    """Download url to dst with torch hub's helper (it writes a temp file and renames, so dst is never partial)."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    torch.hub.download_url_to_file(url, dst, progress=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """Read a state dict saved by torch.save, turning every failure into a one-line SweeperError."""
    if not os.path.exists(path):
        raise SweeperError(f"backbone weights {path}: no such file")
    if not os.path.isfile(path):
        raise SweeperError(f"backbone weights {path}: not a file")
    try:
        # weights_only: a checkpoint is data; never run pickled code from a downloaded file.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        # torch's UnpicklingError text advises weights_only=False, wrong advice for a file from outside
        detail = (
            "the unpickler rejected it (not a torch file, or it holds objects other than tensors)"
            if isinstance(exc, pickle.UnpicklingError)
            else _one_line(exc)
        )
        raise SweeperError(
            f"backbone weights {path}: not a readable torch checkpoint (corrupt or another format): {detail}"
        ) from exc
    if not isinstance(obj, Mapping) or not obj:
        raise SweeperError(f"backbone weights {path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise SweeperError(
            f"backbone weights {path}: expected a state dict (name -> tensor), but {len(bad)} entries are not "
            f"tensors (e.g. {', '.join(bad[:3])}); a wrapped training checkpoint must be unwrapped first"
        )
    return dict(obj)


def _first(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _looks_like(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Name the registered pretrained architecture a state dict was saved from, if any."""
    proj = state_dict.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 4:
        return None
    depth = len({m.group(1) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))})
    for spec in BACKBONES.values():
        if spec.pretrained and (spec.embed_dim, spec.depth, spec.patch_size) == (proj.shape[0], depth, proj.shape[-1]):
            return spec.name
    return None


def _check_fits(
    state_dict: Mapping[str, torch.Tensor], vit: DinoVisionTransformer, *, spec: BackboneSpec, path: str
) -> None:
    """Raise a SweeperError naming missing/unexpected keys and shape mismatches unless the weights fit exactly."""
    expected = vit.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    not_float = [k for k in expected if k in state_dict and not state_dict[k].is_floating_point()]
    if not (missing or unexpected or mismatched or not_float):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches, file vs model ({_first(mismatched, 3)})")
    if not_float:
        problems.append(f"{len(not_float)} non-float tensors ({_first(not_float)})")
    guess = _looks_like(state_dict)
    hint = f"; the file looks like {guess} weights" if guess and guess != spec.name else ""
    raise SweeperError(f"backbone weights {path} do not fit {spec.name}: {'; '.join(problems)}{hint}")


def _resolve_weights_file(spec: BackboneSpec, weights: str | os.PathLike | None) -> tuple[str, bool]:
    """The checkpoint to load and whether it came from the hub cache or a download (True) or the user (False)."""
    if weights is not None:
        return os.fspath(weights), False
    assert spec.checkpoint_url is not None
    cached = cache_path(spec)
    if os.path.isfile(cached):
        logger.info("using cached %s weights %s", spec.name, cached)
        return cached, True
    logger.info("downloading %s weights from %s to %s", spec.name, spec.checkpoint_url, cached)
    try:
        download_checkpoint(spec.checkpoint_url, cached)
    except Exception as exc:  # offline, DNS, HTTP, proxy, disk: all end in the same advice
        raise SweeperError(
            f"could not download {spec.name} weights from {spec.checkpoint_url} ({_one_line(exc)}); "
            f"fetch that file elsewhere and pass --weights PATH, or place it at {cached}"
        ) from exc
    return cached, True


class FrozenBackbone(nn.Module):
    """A DINOv2 ViT frozen in eval mode: normalised images in, a (B, H/14, W/14, C) float32 token grid out."""

    def __init__(
        self, vit: DinoVisionTransformer, *, spec: BackboneSpec, description: str, weights_digest: str
    ) -> None:
        super().__init__()
        self.vit = vit.eval().requires_grad_(False)
        self.name = spec.name
        self.embed_dim = spec.embed_dim
        self.patch_size = spec.patch_size
        self.trained = spec.pretrained
        self.weights_digest = weights_digest  # part of the feature-cache key: same weights, same digest
        self.description = description
        self.forward_count = 0  # images seen by forward, so tests can prove a feature cache is used

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Stay in eval mode whatever a containing module asks: the backbone is never trained."""
        return super().train(False)

    def extra_repr(self) -> str:
        return self.description

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, H/14, W/14, C) float32 of normalised (B, 3, H, W) images, H and W multiples of 14."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise SweeperError(
                f"backbone {self.name}: expected images of shape (B, 3, H, W), got {tuple(images.shape)}"
            )
        b, _, h, w = images.shape
        p = self.patch_size
        if h % p or w % p or h == 0 or w == 0:
            raise SweeperError(
                f"backbone {self.name}: image size {h}x{w} is not a positive multiple of the {p}px patch "
                f"(e.g. {max(p, h // p * p)}x{max(p, w // p * p)})"
            )
        if not images.is_floating_point():
            raise SweeperError(f"backbone {self.name}: expected normalised float images, got {images.dtype}")
        weight = self.vit.pos_embed
        with torch.inference_mode():
            tokens = self.vit.forward_features(images.to(device=weight.device, dtype=weight.dtype))
            grid = tokens["x_norm_patchtokens"].reshape(b, h // p, w // p, self.embed_dim).float()
        self.forward_count += b
        # Inference-mode tensors cannot be saved for backward; a clone made outside
        # inference mode is an ordinary tensor a trainable head can consume directly.
        return grid.clone()


def create_backbone(name: str, *, weights: str | os.PathLike | None = None, seed: int = 0) -> FrozenBackbone:
    """Build the named backbone with its weights (file, hub cache or download; seeded random for random_*)."""
    spec = BACKBONES.get(name)
    if spec is None:
        raise SweeperError(f"unknown backbone {name!r}; known backbones: {', '.join(BACKBONES)}")

    if not spec.pretrained:
        if weights is not None:
            raise SweeperError(
                f"backbone {name} uses seeded random weights and takes no --weights file "
                f"({os.fspath(weights)}); use a dinov2_* backbone to load it"
            )
        vit = build_vit(spec, seed=seed)
        digest = weights_digest(vit)
        logger.warning("backbone %s has UNTRAINED random weights (seed %d): results are not meaningful", name, seed)
        description = f"{name} (UNTRAINED random weights, seed {seed}: for offline runs, not for real results)"
        return FrozenBackbone(vit, spec=spec, description=description, weights_digest=digest)

    path, official = _resolve_weights_file(spec, weights)
    state_dict = _load_state_dict_file(path)
    vit = build_vit(spec, seed=None)  # every tensor is overwritten by the checkpoint below
    _check_fits(state_dict, vit, spec=spec, path=path)
    vit.load_state_dict(state_dict, strict=True)
    digest = weights_digest(vit)
    source = "Meta pretrained weights" if official else f"pretrained weights from {path}"
    logger.info("loaded %s weights %s (digest %s)", name, path, digest)
    return FrozenBackbone(vit, spec=spec, description=f"{name} ({source}, digest {digest})", weights_digest=digest)
