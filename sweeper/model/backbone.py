"""The frozen DINOv2 backbone: the registry of backbones, their weights, and the frozen wrapper.

`create_backbone(name)` builds a registered architecture (`sweeper.model.vit`, a
plain-torch ViT that loads Meta's hub checkpoints), resolves its weights
(a `--weights` file, else the torch hub cache, else a download) and wraps it in
a `FrozenBackbone` that maps normalised images to a grid of patch tokens. A new
backbone is one `BackboneSpec` in BACKBONES.
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
from torch import nn

from sweeper.errors import SweeperError, one_line
from sweeper.model.vit import DinoVisionTransformer, build_vit

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
            else one_line(exc)
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
            f"could not download {spec.name} weights from {spec.checkpoint_url} ({one_line(exc)}); "
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
