"""`sweeper plan`: what a sweep will cost on this machine, before anything expensive runs.

The model, and what each projection rests on:

- **Trial-epochs**: `sweeper.search.plan_epochs` (ASHA's rungs simulated; lower, expected, upper).
- **Time**: cache = images without an entry x the backbone's forward per image (measured here, on the
  device that builds it). A trial-epoch = train images x the head's training step per image at the
  space's mean batch size + val images x the eval step per image (both measured here with `train`, the
  product's own loop, on random tokens of the real shape, with the trial's thread count); the baseline
  trial's epochs at its own head and batch size (`baseline_epoch_s`), the others' at the space's; trials at once
  share the cores: a trial-epoch is slower by (trials x threads) / cores when that exceeds 1, and on a CPU by
  what the memory probe below measured (`sweep_epoch_factor`: its trials, run at the sweep's concurrency up to
  the cores, against the model's projection of the same epoch; two trials on two cores run about 15 % slower
  than one alone, though they do not outnumber the cores). Each trial's
  first epoch is cold (lazy set-up of its head, optimiser and buffers): the same `train` runs measure what
  their first epoch took beyond a warm one, paid once per trial (`cold_epoch_seconds`). The sweep
  (`simulated_sweep_seconds`) = its start + the mean makespan of the simulated sweeps (`makespan`: trials
  start in order, each on the first of the slots to come free, so the last ones can run alone), a trial
  taking its set-up in a reused worker (`TRIAL_SETUP_S`, from scripts/bench/bench.py), cold extra and epochs.
  The start is measured by the memory probe below: `start_ray`, then Tune's fit beyond its trials (Tune's
  own start, a fresh worker's imports); `RAY_START_S` when not measured. The lower bound packs the lower
  trial-epochs perfectly into the slots (`sweep_seconds`); the upper runs every trial at its longest. The
  naive phase-1 run = 10 epochs of 4 backbone passes per image plus the head's steps.
- **Memory**: the cache's bytes are exact (the arrays' shapes). A trial's host memory is measured whole, on
  the trial the space can make most demanding (`memory_worst_point`: its largest batch, the head with the
  most parameters, the optimiser with the most state per parameter, train metrics on if it can turn them
  on), run as the sweep runs it: a local Ray started for it, random arrays of the real shape in its object
  store, the sweep's own trainable (`trial_main`) under Ray Tune's session with every epoch's checkpoint
  persisted, twice in each reused worker, as many workers at once as the sweep runs (`probe_concurrency`),
  `probe_epochs` each (a trial's peak is a running maximum: it climbs
  over the first epochs, 2-epoch probes saw its low end); the peak is the trial's own sampler's
  (`sweeper.search.trial.PeakMemory`), plus `STORE_PRIVATE_PER_MB` for each MB of the sweep's tokens beyond
  the probe's (`trial_memory_mb`).
  Flipped tokens and label variants are not probed: they live in the shared object store, and a mixed
  batch is the size of a plain one. On a GPU, a trial needs the allocator's peak reserved bytes in the
  benchmarks plus the cached tokens where its share stages them (`sweeper.training.device.tokens_fit`), within
  `sweeper.training.device.memory_budget` of its share.

This module is the model (pure functions, tested on crafted numbers), the plan file and the table;
`sweeper.search.plan_measure` measures this machine and makes the plan.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sweeper.errors import SweeperError
from sweeper.files import size_text
from sweeper.search.plan_epochs import epochs_distribution

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"  # written by `sweeper plan` into --out; `search` reuses a recent one
PLAN_MAX_AGE_S = 7 * 24 * 3600  # a plan older than this is not reused (the machine may have changed)
RAY_START_S = 12.4  # a local Ray's start-up with the sweep's set-up, measured by scripts/bench/bench.py (2-core CPU)
TRIAL_SETUP_S = 0.6  # one trial's set-up in a reused worker, measured by scripts/bench/bench.py
GPU_SHARES = (1 / 8, 1 / 6, 1 / 5, 1 / 4, 1 / 3, 1 / 2, 1.0)  # shares the recommendation chooses among
MARGIN = 1.2  # a peak must fit this many times over to be recommended
NAIVE_EPOCHS = 10  # phase 1's run
PROBE_EPOCHS = 4  # each memory-probe trial's epochs: a trial's running peak climbs over its first ~5 epochs
EPOCH_GROWTH_WARN = 1.5  # a probe trial's later warm epochs this much slower than its first: warned (issue 26)
PROBE_MAX_CONCURRENT = 4  # the probe runs at most this many trials at once (its memory and time on a big machine)
# private MB a trial gains per MB of cached tokens it reads from the object store (shared, not copied): 0.2 by
STORE_PRIVATE_PER_MB = 0.2  # scripts/bench/bench_trials.py (docs/performance.md); 0.19 by this probe at 24 and 800 images


# --------------------------------------------------------------------------- the model (pure)


def probe_epochs(space) -> int:
    """Epochs of each memory-probe trial: `PROBE_EPOCHS`, fewer when no trial of the space runs that long, but
    never fewer than 2 (a trial's first epoch is cold: `sweep_epoch_factor` times the later ones)."""
    return int(max(2, min(PROBE_EPOCHS, epochs_distribution(space)[:, 0].max())))


def probe_concurrency(concurrent: int, threads: int, cores: int, device: str) -> int:
    """Trials the memory probe runs at once: the sweep's, as many as the cores hold (beyond that `contention`
    scales), at most `PROBE_MAX_CONCURRENT`; one for a GPU sweep (the probe runs on the CPU)."""
    if device != "cpu":
        return 1
    return max(1, min(concurrent, cores // max(1, threads), PROBE_MAX_CONCURRENT))


def sweep_epoch_factor(probe: dict[str, Any], projected_epoch_s: float) -> float:
    """How much slower the probe's real trials ran an epoch (the sweep's trainable under Tune, at the sweep's
    concurrency) than the model projects the same epoch from `train` alone: the median of their warm epochs
    (each trial's first is cold) over `projected_epoch_s`; 1 when not measured."""
    warm = [s for t in probe.get("trials", []) for s in t["epoch_seconds"][1:]]
    return float(np.median(warm)) / projected_epoch_s if warm and projected_epoch_s > 0 else 1.0


def makespan(durations: Sequence[float], concurrent: int) -> float:
    """Wall time of trials started in order, each on the first of `concurrent` slots to come free (as Tune
    starts a new trial when a running one ends): the last trials can run alone."""
    slots = [0.0] * max(1, concurrent)
    for d in durations:
        slots[slots.index(min(slots))] += d
    return max(slots)


def simulated_sweep_seconds(sims: np.ndarray, *, epoch_s: float, cold_s: float, concurrent: int,
                            start_s: float | None = None, baseline_epoch_s: float | None = None) -> float:
    """A sweep's expected wall time after its cache: its start, then the mean makespan over simulated sweeps
    (`plan_epochs.simulate_asha(..., per_trial=True)`) of trials each taking its set-up, cold extra and epochs;
    trial 0's epochs at `baseline_epoch_s` (its own config's) when given."""
    start = RAY_START_S if start_s is None else start_s
    per = np.full(sims.shape[1], float(epoch_s))
    if baseline_epoch_s is not None:
        per[0] = baseline_epoch_s
    return start + float(np.mean([makespan(row * per + cold_s + TRIAL_SETUP_S, concurrent) for row in sims]))


def choices(space, name: str) -> list[Any]:
    """Every value a categorical field can take here, or a numeric one's bounds; the baseline's (or fixed) value too."""
    spec = next((p for p in space.params if p.name == name), None)
    base = getattr(space.to_config(space.baseline_point()), name)
    base = getattr(base, "value", base)  # an enum as its string, as a space file writes it
    values = ([] if spec is None else list(spec.choices) if spec.type.value == "categorical"
              else [type(base)(spec.low), type(base)(spec.high)])
    return list(dict.fromkeys([base, *values]))


def head_parameters(name: str, *, in_channels: int, num_classes: int) -> int:
    """A head's parameter count, the head built on torch's meta device (no memory, no compute)."""
    import torch

    from sweeper.model.head import create_head

    with torch.device("meta"):
        return sum(p.numel() for p in create_head(name, in_channels=in_channels, num_classes=num_classes).parameters())


def optimizer_state(name: str, momentum: float) -> int:
    """Parameter-sized buffers an optimiser keeps: SGD its momentum (none at 0), Adam/AdamW two moments."""
    return {"sgd": int(momentum > 0), "adam": 2, "adamw": 2}[str(name)]


def memory_worst_point(space, *, in_channels: int, num_classes: int) -> dict[str, Any]:
    """The trial of this space that needs the most memory, as params over the baseline's: the largest training and
    eval batch, the head with the most parameters (weights, gradients, optimiser state), the optimiser with the
    most state per parameter, train metrics on where the space can turn them on."""
    point = dict(space.baseline_point())
    for name in ("batch_size", "eval_batch_size"):
        point[name] = max(int(v) for v in choices(space, name))
    point["head"] = max(choices(space, "head"), key=lambda h: head_parameters(
        str(h), in_channels=in_channels, num_classes=num_classes))
    momentum = max(float(v) for v in choices(space, "momentum"))
    point["optimizer"] = max(choices(space, "optimizer"), key=lambda o: optimizer_state(str(o), momentum))
    if str(point["optimizer"]) == "sgd":
        point["momentum"] = momentum
    point["train_metrics"] = any(bool(v) for v in choices(space, "train_metrics"))
    return point


@dataclass(frozen=True)
class Bench:
    """What the micro-benchmarks measured on this machine and device (seconds per image, MB)."""

    device: str
    threads: int
    backbone_s_per_image: float
    train_s_per_image: dict[str, float]  # "head/batch" -> one training step's seconds per image
    eval_s_per_image: dict[str, float]  # head -> the eval pass's seconds per image
    working_set_mb: dict[str, float]  # "head/batch" -> host memory the run added at its peak
    gpu_reserved_mb: dict[str, float] = field(default_factory=dict)  # "head/batch" -> allocator peak
    cold_epoch_s: dict[str, float] = field(default_factory=dict)  # "head/batch" -> first epoch's extra seconds
    trial_peak_mb: float = 0.0  # a trial's peak private memory: the space's most demanding config run as a trial
    trial_probe: dict[str, Any] = field(default_factory=dict)  # that run: its config, each trial's peak and epochs
    seconds: float = 0.0  # what the benchmarks took
    load_average: tuple[float, ...] = ()  # this machine's 1-minute load at their start and end: others' work slows them


def trial_epoch_seconds(bench: Bench, heads: Sequence[str], batches: Sequence[int], n_train: int,
                        n_val: int, slowdown: float) -> float:
    """A trial-epoch's seconds, averaged over the heads and batch sizes the space can choose."""
    per = [n_train * bench.train_s_per_image[f"{h}/{b}"] + n_val * bench.eval_s_per_image[h]
           for h in heads for b in batches]
    return slowdown * float(np.mean(per))


def trial_memory_mb(probe_mb: float, token_bytes: int, probe_token_bytes: int) -> float:
    """A trial's peak private MB: the probe's, plus what reading the sweep's larger token cache adds."""
    return probe_mb + STORE_PRIVATE_PER_MB * max(0, token_bytes - probe_token_bytes) / 2**20


def cold_epoch_seconds(bench: Bench, heads: Sequence[str], batches: Sequence[int], slowdown: float) -> float:
    """What a trial's first epoch takes beyond a warm one, averaged like `trial_epoch_seconds` (0 unmeasured)."""
    per = [bench.cold_epoch_s.get(f"{h}/{b}", 0.0) for h in heads for b in batches]
    return slowdown * float(np.mean(per))


def sweep_seconds(trial_epochs: float, *, epoch_s: float, cold_s: float, trials: int, concurrent: int,
                  start_s: float | None = None, baseline: tuple[float, float] | None = None) -> float:
    """A sweep's wall time after its cache with its trial-epochs and cold extras packed perfectly into the slots;
    `baseline`: trial 0's (epochs, seconds per epoch), those epochs at its own config's cost."""
    start = RAY_START_S if start_s is None else start_s
    base_epochs, base_s = baseline if baseline is not None else (0.0, epoch_s)
    work = base_epochs * base_s + (trial_epochs - base_epochs) * epoch_s
    return start + trials * TRIAL_SETUP_S + (work + trials * cold_s) / max(1, concurrent)


def contention(concurrent: int, threads: int, cores: int, device: str) -> float:
    """How much slower a trial-epoch runs when `concurrent` trials share this machine's cores (CPU only)."""
    return 1.0 if device != "cpu" else max(1.0, concurrent * threads / max(1, cores))


def naive_epoch_seconds(bench: Bench, n_train: int, n_val: int) -> float:
    """Phase 1's epoch: the backbone on every image 4 times (train, train metrics, val loss, val metrics)
    beside the head's steps at batch 2 and its two eval passes."""
    head = "convnext_phase1"
    train = bench.train_s_per_image.get(f"{head}/2", next(iter(bench.train_s_per_image.values())))
    ev = bench.eval_s_per_image.get(head, next(iter(bench.eval_s_per_image.values())))
    return (n_train * (2 * bench.backbone_s_per_image + train + ev)
            + n_val * 2 * (bench.backbone_s_per_image + ev))


def recommend_gpu(need_mb: dict[float, float], card_bytes: int, limit_bytes: int | None) -> dict[str, Any] | None:
    """The smallest share (most trials at once) whose cap holds its measured need `MARGIN` times over.
    `need_mb`: share -> MB a trial needs at that share (its working set plus any tokens the share stages)."""
    from sweeper.training.device import memory_budget

    for share in GPU_SHARES:
        cap = memory_budget(share, card_bytes, limit_bytes=limit_bytes)
        cap_mb = (cap if cap is not None else min(card_bytes, limit_bytes or card_bytes)) / 2**20
        if need_mb[share] * MARGIN <= cap_mb:
            return {"gpus_per_trial": round(share, 4), "max_concurrent": int(round(1 / share)),
                    "cap_mb": round(cap_mb), "need_mb": round(need_mb[share]),
                    "margin": round(cap_mb / need_mb[share], 2)}
    return None


def recommend_cpu(trial_mb: float, available_mb: float, cores: int, threads: int) -> dict[str, Any]:
    """Trials at once on the CPU: one per `threads` cores, as many as the free memory holds `MARGIN` times."""
    by_cores = max(1, cores // max(1, threads))
    by_memory = max(1, int(available_mb / (trial_mb * MARGIN)))
    n = min(by_cores, by_memory)
    return {"gpus_per_trial": 0, "max_concurrent": n, "limited_by": "cores" if by_cores <= by_memory else "memory",
            "margin": round(available_mb / (n * trial_mb), 2)}


def duration(seconds: float) -> str:
    """Seconds as the table and summary print them: seconds under 90, minutes under 90, else hours."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def plan_summary(plan: dict[str, Any]) -> str:
    """The one line `search` prints at start."""
    t, e, r = plan.get("time", {}), plan.get("trial_epochs", {}), plan.get("resources", {})
    parts = []
    if e:
        parts.append(f"{e['expected']:.0f} trial-epochs expected ({e['lower']:.0f}-{e['upper']:.0f})")
    if t.get("sweep_seconds"):
        parts.append(f"about {duration(t['sweep_seconds'])} at {plan['options']['max_concurrent']} at once")
    if r.get("cache_missing_bytes") is not None:
        parts.append(f"cache to build {size_text(r['cache_missing_bytes'])} ({size_text(r['cache_free_bytes'])} free)")
    if r.get("trial_host_mb"):
        parts.append(f"trial peak ~{r['trial_host_mb']:.0f} MB")
    return "plan: " + ("; ".join(parts) if parts else "nothing to project")


def load_recent_plan(path: Path, *, key: dict[str, Any]) -> dict[str, Any] | None:
    """A plan.json written for the same data, device and space (`key`) in the last `PLAN_MAX_AGE_S`."""
    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if plan.get("key") != key or time.time() - float(plan.get("written_at", 0)) > PLAN_MAX_AGE_S:
        return None
    return plan


# --------------------------------------------------------------------------- plan files and refusals


def plan_key(args, space) -> dict[str, Any]:
    """What a plan's micro-benchmarks and projections are valid for: the same --data, --device, --backbone,
    --cache-dtype and space file (as given on the command line: `search` checks it before loading anything)."""
    from sweeper.files import file_sha256

    return {"data": str(Path(args.data).resolve()) if args.data else "embedded synthetic set",
            "device": str(args.device), "backbone": str(args.backbone), "cache_dtype": str(args.cache_dtype),
            "space_sha256": file_sha256(Path(space.source))}


def refusals(plan: dict[str, Any]) -> list[str]:
    """What `search` would refuse with these options, each as its one-line reason."""
    r, o = plan["resources"], plan["options"]
    out = []
    if r["cache_missing_bytes"] > r["cache_free_bytes"]:
        out.append(f"the cache needs {size_text(r['cache_missing_bytes'])} more and its disk has "
                   f"{size_text(r['cache_free_bytes'])} free")
    cap = r.get("gpu_cap_mb")
    if cap is not None and r.get("gpu_working_set_mb", 0) > cap:
        out.append(f"--gpus-per-trial {o['gpus_per_trial']:g}: a trial needs ~{r['gpu_working_set_mb']} MB of GPU "
                   f"memory and its share's cap is {cap} MB")
    return out


def check_share_fits(plan: dict[str, Any] | None, gpus_per_trial: float, card_bytes: int,
                     limit_bytes: int | None, plan_path: Path) -> None:
    """Refuse, in one line before any work, a GPU share whose cap cannot hold the trial's measured need."""
    from sweeper.training.device import memory_budget

    if plan is None or not gpus_per_trial or "gpu_working_set_mb" not in plan.get("resources", {}):
        return
    cap = memory_budget(gpus_per_trial, card_bytes, limit_bytes=limit_bytes)
    need = float(plan["resources"]["gpu_working_set_mb"])
    if cap is not None and need * 2**20 > cap:
        rec = plan.get("recommendation") or {}
        hint = (f"use --gpus-per-trial {rec['gpus_per_trial']:g} (the plan's recommendation)" if rec
                else "no share of this card fits it")
        raise SweeperError(f"--gpus-per-trial {gpus_per_trial:g}: a trial needs ~{need:.0f} MB of GPU memory "
                           f"(measured by sweeper plan, {plan_path}) and its share's cap is {cap / 2**20:.0f} MB "
                           f"on this card: {hint}")


def epoch_growth_warnings(probe: dict[str, Any]) -> list[str]:
    """Warnings for probe trials whose epochs got slower as they trained (the plan assumes a steady cost).

    A trial's last warm epoch against its fastest earlier warm one (the first epoch is cold): load from other work
    slows single epochs at random, so an earlier slow epoch is noise, while growth shows at the end. Subnormal
    floats did this to AdamW trials (2.9 s, 4.0 s, then 13.6-19.3 s) until `train` flushed them.
    """
    out = []
    for t in probe.get("trials", []):
        warm = [float(x) for x in t["epoch_seconds"][1:]]
        if len(warm) >= 2 and warm[-1] > EPOCH_GROWTH_WARN * min(warm[:-1]):
            c, first = probe.get("config", {}), min(warm[:-1])
            named = ", ".join(f"{k} {c[k]:g}" if isinstance(c[k], float) else f"{k} {c[k]}"
                              for k in ("optimizer", "lr", "batch_size", "class_weights") if k in c)
            out.append(f"a probe trial's epochs grew from {first:.1f} s to {warm[-1]:.1f} s ({warm[-1] / first:.1f}x) "
                       f"as it trained ({named}): trials like it may take longer than planned")
    return out


def format_plan(plan: dict[str, Any]) -> str:
    """The table `sweeper plan` prints: one line per question, readable at a glance."""
    d, o, b, e, t, r = (plan[k] for k in ("data", "options", "bench", "trial_epochs", "time", "resources"))
    gb = lambda n: f"{n / 1e9:.2f} GB"  # noqa: E731
    train_ms, load = ", ".join(f"{k} {1000 * v:.0f}" for k, v in b["train_s_per_image"].items()), b.get("load_average")
    rows = [
        ("data", f"{d['train_images']} train + {d['val_images']} val images {d['image_size'][0]}x{d['image_size'][1]}"
                 f"{' (SYNTHETIC)' if d['synthetic'] else ''}, trained at {d['training_size'][1]}x{d['training_size'][0]}"),
        ("measured here", f"{b['device']}, {b['threads']} thread(s), load {max(load or [0]):.1f}: backbone "
                          f"{1000 * b['backbone_s_per_image']:.0f} ms/image; train step ms/image {train_ms}; eval "
                          + ", ".join(f"{k} {1000 * v:.0f}" for k, v in b["eval_s_per_image"].items()) + " ms/image"),
        ("cache", f"{gb(r['cache_bytes'])} in all, {gb(r['cache_missing_bytes'])} to build "
                  f"(~{duration(t['cache_seconds'])}); "
                  f"{gb(r['cache_free_bytes'])} free there"),
        ("trial-epochs", f"{e['expected']:.0f} expected (lower {e['lower']:.0f}, upper {e['upper']:.0f}) for "
                         f"{o['trials']} trials"),
        ("time", f"trial-epoch {t['trial_epoch_seconds']:.1f} s (+{t.get('cold_epoch_seconds', 0):.1f} s a trial's "
                 f"first) x{t['contention']:g} slower in the sweep; sweep ~"
                 f"{duration(t['sweep_seconds'])} ({' to '.join(duration(x) for x in t['sweep_seconds_range'])}) "
                 f"at {o['max_concurrent']} at once; one naive phase-1 run ~{duration(t['naive_phase1_seconds'])}"),
        ("memory", f"trial ~{r['trial_host_mb']} MB host; object store {gb(r['object_store_bytes'])}; "
                   f"{r['available_memory_mb']} MB available"
                   + (f"; GPU working set {r['gpu_working_set_mb']} MB, cap {r['gpu_cap_mb']} MB at "
                      f"{o['gpus_per_trial']:g}" if "gpu_working_set_mb" in r else "")),
    ]
    rec = plan.get("recommendation")
    rows.append(("recommendation", "no share of this card holds a trial" if rec is None else
                 f"--max-concurrent {rec['max_concurrent']} --gpus-per-trial {rec['gpus_per_trial']:g} "
                 f"(margin {rec['margin']}x" + (f", limited by {rec['limited_by']})" if "limited_by" in rec else ")")))
    rows.append(("search would refuse", "; ".join(plan["refusals"]) or "nothing"))
    rows += [("warning", w) for w in plan.get("warnings", [])]
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {v}" for a, v in rows)
