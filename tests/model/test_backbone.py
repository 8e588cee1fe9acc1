"""Tests for sweeper.model.backbone: equality with Meta's DINOv2 code, weight resolution, errors, the frozen wrapper."""

from __future__ import annotations

import os
import shutil
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sweeper.errors import SweeperError
from sweeper.model import backbone as bb
from sweeper.model.backbone import BACKBONES, FrozenBackbone, create_backbone, weights_digest
from sweeper.model.vit import DinoVisionTransformer, build_vit

H, W = 266, 476  # phase-1 input size: a 19x34 patch grid, not square, so pos_embed is resampled


def _meta_vision_transformer(monkeypatch: pytest.MonkeyPatch):
    """Meta's ViT module from the `dinov2` PyPI package, or skip (fail when SWEEPER_REQUIRE_REFERENCE=1)."""
    try:
        # Only the model code: dinov2/__init__.py is empty and the model modules need
        # nothing beyond torch (they log "xFormers not available" and fall back).
        import dinov2.layers.attention as meta_attention
        import dinov2.models.vision_transformer as meta_vits
    except Exception as exc:
        reason = (
            f"Meta's reference code is not importable ({type(exc).__name__}: {exc}); "
            "install it with: pip install --no-deps dinov2==0.0.1.dev2"
        )
        if os.environ.get("SWEEPER_REQUIRE_REFERENCE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    # Where xformers is installed, MemEffAttention would route CPU tensors to its
    # kernels; the plain softmax path is the reference we want.
    monkeypatch.setattr(meta_attention, "XFORMERS_AVAILABLE", False)
    return meta_vits


def _meta_hub_vit(meta_vits, arch: str, *, seed: int | None) -> torch.nn.Module:
    """Meta's model as torch.hub builds it, with every tensor random from `seed` (None: shapes only)."""
    with torch.device("meta"):  # skips Meta's slow CPU init; all values are set below
        # The arguments dinov2/hub/backbones.py passes for the non-register models; the
        # PyPI release predates interpolate_offset but hard-codes the same 0.1.
        # block_chunks=0 keeps keys as blocks.{i}.*, as in the released checkpoints.
        # drop_path_uniform only avoids a .item() that meta tensors cannot do (rate is 0).
        model = getattr(meta_vits, arch)(
            patch_size=14, img_size=518, init_values=1.0, block_chunks=0, ffn_layer="mlp", drop_path_uniform=True
        )
    if seed is None:
        return model
    model.to_empty(device="cpu").eval()
    _scramble(model.state_dict(), seed=seed)
    return model


@torch.no_grad()
def _scramble(state_dict: dict[str, torch.Tensor], seed: int) -> None:
    """Give every tensor distinct random values, so a swapped key or an ignored parameter shows."""
    g = torch.Generator().manual_seed(seed)
    for key, t in state_dict.items():
        if key.endswith("gamma"):
            t.copy_(0.5 + torch.rand(t.shape, generator=g))
        elif "norm" in key and key.endswith("weight"):
            t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
        elif key.endswith("bias") or key in ("cls_token", "mask_token"):
            t.copy_(0.05 * torch.randn(t.shape, generator=g))
        elif key == "pos_embed":
            t.copy_(0.5 * torch.randn(t.shape, generator=g))  # large, so a wrong resampling cannot hide
        else:  # matmul and conv weights, ViT scale
            t.copy_(0.02 * torch.randn(t.shape, generator=g))


def _shape_only_checkpoint(path: Path, name: str, value: float = 0.01) -> Path:
    """A checkpoint with the keys and shapes of `name` but one stored number per tensor (tiny and fast)."""
    with torch.device("meta"):
        spec = BACKBONES[name]
        shapes = {k: v.shape for k, v in DinoVisionTransformer(
            embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.num_heads
        ).state_dict().items()}
    torch.save({k: torch.full((), value).expand(s) for k, s in shapes.items()}, path)
    return path


@pytest.fixture(scope="module")
def vits14_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ViT-S/14 checkpoint in Meta's layout, written from our own seeded random model."""
    path = tmp_path_factory.mktemp("ckpt") / "dinov2_vits14_pretrain.pth"
    torch.save(build_vit(BACKBONES["dinov2_vits14"], seed=3).state_dict(), path)
    return path


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub directory for this test only."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


# --- equality with Meta's implementation -------------------------------------------------------


def test_tokens_match_meta_reference_at_266x476(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta_vits = _meta_vision_transformer(monkeypatch)
    ref = _meta_hub_vit(meta_vits, "vit_small", seed=1)
    path = tmp_path / "meta_vits14.pth"
    torch.save(ref.state_dict(), path)

    ours = create_backbone("dinov2_vits14", weights=path)
    images = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref.forward_features(images)
        got = ours.vit.forward_features(images)
    grid = ours(images)

    assert grid.shape == (2, 19, 34, 384)
    assert (grid.reshape(2, -1, 384) - expected["x_norm_patchtokens"]).abs().max() < 1e-4
    assert (got["x_norm_clstoken"] - expected["x_norm_clstoken"]).abs().max() < 1e-4
    assert (got["x_prenorm"] - expected["x_prenorm"]).abs().max() < 1e-4
    assert expected["x_norm_patchtokens"].std() > 0.5  # the comparison is between non-trivial tokens


def test_pos_embed_resampling_matches_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    meta_vits = _meta_vision_transformer(monkeypatch)
    ref = _meta_hub_vit(meta_vits, "vit_small", seed=0)
    ours = build_vit(BACKBONES["dinov2_vits14"], seed=None)
    ours.load_state_dict(ref.state_dict())
    # Meta names the image dims (w, h) = (H, W); its (B, 1 + N, D) argument only supplies N and D.
    for h, w in [(H, W), (518, 518), (28, 28), (532, 532), (14, 700)]:
        tokens = torch.zeros(1, 1 + (h // 14) * (w // 14), 384)
        expected = ref.interpolate_pos_encoding(tokens, h, w)
        assert torch.equal(ours.interpolate_pos_embed(h // 14, w // 14), expected), (h, w)
    # The 0.1-offset scale factor is not the same as asking for the output size:
    # this test would catch an implementation that "simplified" it.
    grid = ours.pos_embed[:, 1:].reshape(1, 37, 37, 384).permute(0, 3, 1, 2)
    by_size = F.interpolate(grid, size=(19, 34), mode="bicubic").permute(0, 2, 3, 1).reshape(1, -1, 384)
    assert (by_size - ours.interpolate_pos_embed(19, 34)[:, 1:]).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("name", "arch"), [("dinov2_vits14", "vit_small"), ("dinov2_vitb14", "vit_base"), ("dinov2_vitl14", "vit_large")]
)
def test_state_dict_layout_matches_meta(name: str, arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    meta_vits = _meta_vision_transformer(monkeypatch)
    ref = _meta_hub_vit(meta_vits, arch, seed=None)  # shapes only, no memory or init time
    ours = build_vit(BACKBONES[name], seed=None)
    expected = [(k, tuple(v.shape)) for k, v in ref.state_dict().items()]
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == expected
    # Hyperparameters the state dict does not carry and the token test is too coarse to
    # see (LayerNorm eps 1e-5 instead of 1e-6 moves tokens by less than 1e-4 there).
    def settings(model: torch.nn.Module) -> list[tuple]:
        return [
            (n, m.eps) if isinstance(m, torch.nn.LayerNorm) else (n, m.approximate)
            for n, m in model.named_modules()
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.GELU))
        ]

    assert settings(ours) == settings(ref)


# --- weight resolution ---------------------------------------------------------------------------


def test_weights_file_loads_and_digest_is_stable(vits14_file: Path) -> None:
    a = create_backbone("dinov2_vits14", weights=vits14_file)
    b = create_backbone("dinov2_vits14", weights=str(vits14_file))
    assert a.trained and a.name == "dinov2_vits14" and a.embed_dim == 384 and a.patch_size == 14
    assert len(a.weights_digest) == 16 and int(a.weights_digest, 16) >= 0
    assert a.weights_digest == b.weights_digest == weights_digest(a.vit)
    assert a.weights_digest in a.description and str(vits14_file) in a.description
    # loaded exactly: the digest equals that of the model the file was written from
    assert a.weights_digest == weights_digest(build_vit(BACKBONES["dinov2_vits14"], seed=3))


def test_hub_cache_is_used_without_download(vits14_file: Path, hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = hub_dir / "checkpoints" / "dinov2_vits14_pretrain.pth"
    cached.parent.mkdir(parents=True)
    shutil.copy(vits14_file, cached)
    assert bb.cache_path(BACKBONES["dinov2_vits14"]) == str(cached)

    def no_download(url: str, dst: str) -> None:
        raise AssertionError("downloaded although the hub cache holds the file")

    monkeypatch.setattr(bb, "download_checkpoint", no_download)
    backbone = create_backbone("dinov2_vits14")
    assert backbone.weights_digest == create_backbone("dinov2_vits14", weights=vits14_file).weights_digest
    assert "Meta pretrained weights" in backbone.description


def test_download_goes_to_hub_cache(vits14_file: Path, hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_download(url: str, dst: str) -> None:
        calls.append((url, dst))
        shutil.copy(vits14_file, dst)  # the real helper also creates the folder; it exists here

    (hub_dir / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(bb, "download_checkpoint", fake_download)
    create_backbone("dinov2_vits14")
    create_backbone("dinov2_vits14")  # second time from the cache
    url = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"
    assert calls == [(url, str(hub_dir / "checkpoints" / "dinov2_vits14_pretrain.pth"))]


def test_offline_download_failure_says_pass_weights(hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, dst: str) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(bb, "download_checkpoint", offline)
    with pytest.raises(SweeperError) as err:
        create_backbone("dinov2_vits14")
    message = str(err.value)
    assert "\n" not in message
    assert "could not download" in message and "--weights PATH" in message
    assert BACKBONES["dinov2_vits14"].checkpoint_url in message
    assert str(hub_dir / "checkpoints" / "dinov2_vits14_pretrain.pth") in message
    assert "URLError" in message


def test_registry_urls_are_metas() -> None:
    for size in ("s", "b", "l"):
        name = f"dinov2_vit{size}14"
        assert BACKBONES[name].checkpoint_url == f"https://dl.fbaipublicfiles.com/dinov2/{name}/{name}_pretrain.pth"
    random_spec = BACKBONES["random_vits14"]
    assert random_spec.checkpoint_url is None and not random_spec.pretrained and "UNTRAINED" in random_spec.summary
    with pytest.raises(Exception):
        random_spec.depth = 1  # type: ignore[misc]  # specs are frozen


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(SweeperError, match=r"unknown backbone 'dinov2_vitx14'.*dinov2_vits14.*random_vits14"):
        create_backbone("dinov2_vitx14")


def test_missing_and_corrupt_files(tmp_path: Path, vits14_file: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(SweeperError, match=f"{missing}: no such file"):
        create_backbone("dinov2_vits14", weights=missing)

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(vits14_file.read_bytes()[:10_000])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint\n" * 100)
    for path in (truncated, garbage):
        with pytest.raises(SweeperError, match="not a readable torch checkpoint") as err:
            create_backbone("dinov2_vits14", weights=path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)

    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(SweeperError, match=f"{a_list}: expected a state dict.*got list"):
        create_backbone("dinov2_vits14", weights=a_list)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 384)}, "epoch": 3}, wrapped)
    with pytest.raises(SweeperError, match="2 entries are not tensors"):
        create_backbone("dinov2_vits14", weights=wrapped)


def test_vitb14_weights_for_vits14_name_the_mismatches(tmp_path: Path) -> None:
    path = _shape_only_checkpoint(tmp_path / "vitb14.pth", "dinov2_vitb14")
    with pytest.raises(SweeperError) as err:
        create_backbone("dinov2_vits14", weights=path)
    message = str(err.value)
    assert message.startswith(f"backbone weights {path} do not fit dinov2_vits14")
    assert "175 shape mismatches" in message and "cls_token (1, 1, 768) vs (1, 1, 384)" in message
    assert "looks like dinov2_vitb14" in message and "\n" not in message


def test_foreign_state_dict_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.bias": torch.zeros(10)}, path)
    with pytest.raises(SweeperError) as err:
        create_backbone("dinov2_vits14", weights=path)
    message = str(err.value)
    first_five = "cls_token, pos_embed, mask_token, patch_embed.proj.weight, patch_embed.proj.bias"
    assert f"175 missing keys ({first_five}, ... (175 in all))" in message
    assert "2 unexpected keys (conv1.weight, fc.bias)" in message


def test_random_backbone_refuses_weights(vits14_file: Path) -> None:
    with pytest.raises(SweeperError, match="random_vits14 uses seeded random weights and takes no --weights"):
        create_backbone("random_vits14", weights=vits14_file)


# --- the random backbone -------------------------------------------------------------------------


def test_random_backbone_is_deterministic_per_seed() -> None:
    images = torch.randn(1, 3, 28, 42, generator=torch.Generator().manual_seed(0))
    a, b, c = (create_backbone("random_vits14", seed=s) for s in (0, 0, 1))
    assert a.weights_digest == b.weights_digest != c.weights_digest
    assert torch.equal(a(images), b(images))
    assert (a(images) - c(images)).abs().max() > 0.1
    assert not a.trained and "UNTRAINED" in a.description and "seed 0" in a.description


def test_random_backbone_blocks_contribute() -> None:
    """LayerScale 1.0: the blocks change the tokens as much as the embedding, and patches stay distinct."""
    vit = create_backbone("random_vits14").vit
    images = torch.randn(1, 3, 56, 84, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        embedded = vit.patch_embed(images) + vit.interpolate_pos_embed(4, 6)[:, 1:]
        out = vit.forward_features(images)
    change = (out["x_prenorm"][:, 1:] - embedded).norm() / embedded.norm()
    assert change > 0.5  # with Meta's training init (gamma 1e-5) this would be ~1e-5
    tokens = F.normalize(out["x_norm_patchtokens"][0], dim=-1)
    assert (tokens @ tokens.T).mean() < 0.5  # not collapsed onto one direction


def test_random_init_sets_every_parameter() -> None:
    vit = build_vit(BACKBONES["random_vits14"], seed=None)
    with torch.no_grad():
        for p in vit.parameters():
            p.fill_(float("nan"))
    vit.init_random(generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(p).all() for p in vit.parameters())
    weight = vit.blocks[0].mlp.fc1.weight
    assert weight.abs().max() <= 0.04 and abs(weight.std().item() - 0.0176) < 0.001  # N(0, 0.02) cut at 2 std


# --- the frozen wrapper --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_backbone() -> FrozenBackbone:
    return create_backbone("random_vits14")


def test_output_grid_shape_and_dtype(random_backbone: FrozenBackbone) -> None:
    grid = random_backbone(torch.randn(2, 3, H, W))
    assert grid.shape == (2, 19, 34, 384) and grid.dtype == torch.float32
    assert not grid.is_inference() and not grid.requires_grad
    # a trainable head can take the tokens straight from forward
    conv = torch.nn.Conv2d(384, 2, 1)
    conv(grid.permute(0, 3, 1, 2)).sum().backward()
    assert conv.weight.grad is not None


def test_frozen_and_stays_in_eval(random_backbone: FrozenBackbone) -> None:
    assert all(not p.requires_grad for p in random_backbone.parameters())
    torch.nn.Sequential(random_backbone).train()
    assert not random_backbone.training and not random_backbone.vit.training


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((1, 3, 28, 30), r"28x30 is not a positive multiple of the 14px patch"),
        ((1, 1, 28, 28), r"\(B, 3, H, W\)"),
        ((3, 28, 28), r"\(B, 3, H, W\)"),
    ],
)
def test_bad_image_shapes_rejected(random_backbone: FrozenBackbone, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(SweeperError, match=match):
        random_backbone(torch.zeros(shape))


def test_integer_images_rejected(random_backbone: FrozenBackbone) -> None:
    with pytest.raises(SweeperError, match="float images"):
        random_backbone(torch.zeros(1, 3, 28, 28, dtype=torch.uint8))


def test_forward_count_counts_images(random_backbone: FrozenBackbone) -> None:
    assert create_backbone("random_vits14").forward_count == 0
    before = random_backbone.forward_count
    random_backbone(torch.zeros(2, 3, 28, 28))
    random_backbone(torch.zeros(3, 3, 14, 28))
    assert random_backbone.forward_count == before + 5
    with pytest.raises(SweeperError):
        random_backbone(torch.zeros(1, 3, 15, 28))
    assert random_backbone.forward_count == before + 5  # rejected input is not counted


@pytest.mark.parametrize(("name", "dim"), [("dinov2_vitb14", 768), ("dinov2_vitl14", 1024)])
def test_larger_backbones_build_and_run(name: str, dim: int, tmp_path: Path) -> None:
    path = _shape_only_checkpoint(tmp_path / f"{name}.pth", name)  # right layout, constant values
    backbone = create_backbone(name, weights=path)
    grid = backbone(torch.randn(1, 3, 28, 42))
    assert grid.shape == (1, 2, 3, dim) and backbone.embed_dim == dim
    assert torch.isfinite(grid).all()
