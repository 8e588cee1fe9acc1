"""Scale: cache size, epoch and sweep times projected to the full set (2857 train + 317 val) from the
per-image costs and the measured epochs, sweep and overhead."""

from __future__ import annotations

from typing import Any

from bench_setup import EMBED_DIM, FULL_TRAIN, FULL_VAL, GRID, HEIGHT, NAIVE_EPOCHS, WIDTH

TOKEN_BYTES_FLOAT32 = GRID[0] * GRID[1] * EMBED_DIM * 4  # one image's cached tokens
LABEL_BYTES = HEIGHT * WIDTH  # one image's labels, uint8 per pixel


def naive_epoch_s(c: dict[str, Any], train: int, val: int) -> float:
    """Phase 1's epoch: every pass loads the image and runs the backbone (train, train metrics, val loss,
    val metrics)."""
    pass_s = c["image_load_s"] + c["backbone_forward_s"]  # what every pass pays per image before the head
    fwd = c["head_forward_s"]
    return train * (2 * pass_s + c["head_train_step_s"] + fwd) + val * 2 * (pass_s + fwd)


def search_epoch_s(c: dict[str, Any], train: int, val: int) -> float:
    """A cached search trial's epoch: the train pass and one fused val pass."""
    return train * c["head_train_step_s"] + val * c["head_forward_s"]


def scale(costs: dict[str, Any], epochs: dict[str, Any], sweep: dict[str, Any], ovh: dict[str, Any]) -> dict[str, Any]:
    """Cache size, epoch and sweep times for the full dataset from the per-image and measured figures."""
    n, v = FULL_TRAIN, FULL_VAL
    per_image_build = costs["image_load_s"] + costs["backbone_forward_s"]
    search = search_epoch_s(costs, n, v)
    baseline = search + n * costs["head_forward_s"]  # + the train-metrics pass
    naive = naive_epoch_s(costs, n, v)
    tn, tv = epochs["train_images"], epochs["val_images"]
    measured = {  # the same model applied to the measured N-image set: how far the projection is off
        "cached_search": epochs["median_s"]["cached_search"] / search_epoch_s(costs, tn, tv),
        "naive": epochs["median_s"]["naive"] / naive_epoch_s(costs, tn, tv),
    }
    # The sweep: the same trials and epochs as measured, each epoch grown by the cost model,
    # plus the fixed costs (start-up, per-trial overhead) and the bigger cache build.
    grow = search / search_epoch_s(costs, tn, tv)
    fixed = (sweep["timeline_s"]["launch_to_first_trial"] - sweep["parts_s"]["cache_build"]
             + sweep["timeline_s"]["last_trial_to_exit"]
             + sweep["trials"] * ovh["per_trial_s_two_at_once"])
    sweep_s = (n + v) * per_image_build + sweep["epoch_s_total"] * grow / sweep["max_concurrent"] + fixed
    return {
        "sweep_s": sweep_s, "sweep_ratio": sweep_s / (NAIVE_EPOCHS * naive),
        "sweep_assumes": "the measured sweep's epochs, each grown by the cost model, trials packed perfectly",
        "labels_gb": (n + v) * LABEL_BYTES / 1e9,
        # train() counts class pixels with np.bincount, which first copies the uint8 labels to int64
        "pixel_count_transient_gb_per_trial": n * LABEL_BYTES * epochs["pixel_count_peak_per_label_byte"] / 1e9,
        "images": n + v, "token_bytes_per_image_float32": TOKEN_BYTES_FLOAT32,
        "cache_gb_float32": (n + v) * TOKEN_BYTES_FLOAT32 / 1e9,
        "cache_gb_float16": (n + v) * TOKEN_BYTES_FLOAT32 / 2 / 1e9,
        "cache_build_s": (n + v) * per_image_build,
        "epoch_s": {"naive": naive, "cached_search": search, "cached_baseline": baseline},
        "epoch_ratio": {"vs_search": naive / search, "vs_cached_baseline": naive / baseline},
        "measured_over_model_at_N": measured,  # >1: the N-image epoch was slower than the per-image sum
        "threads": costs["threads"],
    }


def describe(sc: dict[str, Any]) -> list[str]:
    """The projection in two lines."""
    return [f"full set ({sc['images']} images): cache {sc['cache_gb_float32']:.2f} GB float32 / "
            f"{sc['cache_gb_float16']:.2f} GB float16; epoch naive {sc['epoch_s']['naive'] / 60:.0f} min, cached "
            f"search {sc['epoch_s']['cached_search'] / 60:.1f} min, cached baseline "
            f"{sc['epoch_s']['cached_baseline'] / 60:.1f} min ({sc['threads']} threads); sweep "
            f"{sc['sweep_s'] / 3600:.1f} h vs naive 10 epochs {NAIVE_EPOCHS * sc['epoch_s']['naive'] / 3600:.1f} h: "
            f"ratio {sc['sweep_ratio']:.2f}",
            f"  counting class pixels takes {sc['pixel_count_transient_gb_per_trial']:.1f} GB per trial on the full "
            f"train set"]
