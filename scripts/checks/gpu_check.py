"""The GPU check: every CUDA path of the product on one GPU, and the user's full-size run, in one command.

Run by scripts/checks/gpu_check.sh within its time limit (one device command of at most 9 minutes). Stages, in order
of what matters most; each is skipped, and says so, when the time left cannot hold it:
  context    one process's CUDA context as nvidia-smi sees it (scripts/checks/cuda_context.py)
  tests      tests/training/test_gpu.py (pytest when installed, else its own runner)
  ray        where Ray and Optuna import: a 16-trial `search` at --gpus-per-trial 0.25 with nvidia-smi
             sampled (every trial must end TERMINATED on cuda)
  full       scripts/checks/gpu_full.py: the full-size synthetic set, its cache, the default sweep at a quarter GPU
             within 6 GiB, the naive phase-1 epoch, a profiled trial-epoch (results/gpu/full_gpu.json)
  baseline   `sweeper baseline --epochs 2` cached and --no-cache on the GPU, and cached on the CPU:
             per-epoch metrics compared (GPU cached vs uncached must agree within 1e-4)
  trainers   four trainer processes at once, each capped to a quarter of the GPU, AMP off and on,
             with nvidia-smi sampled; a SIGKILL and resume of a trainer (scripts/checks/gpu_trainers.py)
  ray_kill   a search killed with SIGKILL while trials run, continued with --resume
Writes results/gpu/gpu_check.json after every stage and prints a table at the end.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: common.py

from common import REPO, run_stages, sweeper_cli, work_dir  # noqa: E402

OUT = REPO / "results" / "gpu"


def run_json(cmd: list[str], env: dict[str, str], timeout: int = 600) -> dict[str, Any]:
    """Run a command that prints one JSON object last; that object (or the error)."""
    p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    sys.stderr.write(p.stderr[-3000:])
    if p.returncode != 0:
        return {"ok": False, "rc": p.returncode, "error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def stage_tests(env: dict[str, str]) -> dict[str, Any]:
    has_pytest = importlib.util.find_spec("pytest") is not None
    cmd = ([sys.executable, "-m", "pytest", "-q", "tests/training/test_gpu.py"] if has_pytest
           else [sys.executable, "tests/training/test_gpu.py"])
    p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    print(p.stdout[-3000:], file=sys.stderr)
    return {"runner": "pytest" if has_pytest else "tests/training/test_gpu.py", "rc": p.returncode,
            "summary": (p.stdout.strip().splitlines() or [""])[-1]}


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """A baseline run's per-epoch records."""
    from sweeper.files import read_jsonl
    from sweeper.rundir.layout import METRICS_FILE

    return read_jsonl(run / METRICS_FILE)


def read_trials(run: Path):
    """A sweep's trials table, None when the sweep wrote none (it failed before its tables)."""
    from sweeper.files import read_csv
    from sweeper.rundir.layout import TRIALS_CSV

    return read_csv(run / TRIALS_CSV) if (run / TRIALS_CSV).is_file() else None


def max_diff(a: list[dict], b: list[dict], keys=("train_loss", "val_loss", "train_iou", "val_iou", "val_miou")):
    return max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in keys if x.get(k) is not None)


def stage_baseline(env: dict[str, str], work: Path) -> dict[str, Any]:
    runs = {"gpu_cached": ["--device", "cuda"], "gpu_uncached": ["--device", "cuda", "--no-cache"],
            "cpu_cached": ["--device", "cpu"]}
    seconds = {}
    for name, extra in runs.items():
        seconds[name] = round(sweeper_cli("-q", "baseline", "--epochs", "2", "--out", str(work / name), *extra,
                                          env=env), 1)
    m = {name: read_metrics(work / name) for name in runs}
    return {"seconds": seconds, "gpu_cached_vs_uncached_max_diff": max_diff(m["gpu_cached"], m["gpu_uncached"]),
            "gpu_vs_cpu_max_diff": max_diff(m["gpu_cached"], m["cpu_cached"]),
            "val_iou": {name: [round(r["val_iou"], 5) for r in rows] for name, rows in m.items()},
            "epoch_seconds": {name: [round(r["epoch_seconds"], 2) for r in rows] for name, rows in m.items()}}


def stage_trainers(env: dict[str, str]) -> dict[str, Any]:
    script = [sys.executable, "scripts/checks/gpu_trainers.py"]
    return {"amp_off": run_json([*script, "--procs", "4", "--share", "0.25"], env),
            "amp_on": run_json([*script, "--procs", "4", "--share", "0.25", "--amp"], env),
            "kill_resume": run_json([*script, "--kill-resume"], env)}


def stage_context(env: dict[str, str]) -> dict[str, Any]:
    from sweeper.training.device import CUDA_CONTEXT_BYTES

    out = run_json([sys.executable, "scripts/checks/cuda_context.py"], env, timeout=120)
    out["kept_back_mb"] = CUDA_CONTEXT_BYTES / 2**20
    return out


def ray_missing() -> str | None:
    missing = [m for m in ("ray", "optuna") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not installed: the Ray part was skipped" if missing else None


def stage_ray(env: dict[str, str], work: Path) -> dict[str, Any]:
    """16 trials at a quarter GPU each: all must end TERMINATED on cuda."""
    if ray_missing():
        return {"skipped": ray_missing()}
    from gpu_trainers import GpuSampler

    with GpuSampler() as sampler:
        seconds = sweeper_cli("search", "--trials", "16", "--gpus-per-trial", "0.25", "--out", str(work),
                              "--name", "gpu16", env=env, check=False)
    trials = read_trials(work / "gpu16")
    if trials is None:
        return {"ok": False, "seconds": round(seconds, 1), "error": "the search wrote no trials.csv"}
    statuses = trials.status.value_counts().to_dict()
    devices = trials.device.dropna().unique().tolist()
    return {"ok": statuses == {"TERMINATED": 16} and devices == ["cuda"], "seconds": round(seconds, 1),
            **sampler.summary(), "trials": len(trials), "statuses": statuses, "devices": devices,
            "gpu_share": trials.gpu_share.dropna().unique().tolist(),
            "out_of_memory": int(trials.out_of_memory.sum()),
            "gpu_peak_reserved_mb_max": float(trials.gpu_peak_reserved_mb.max())
            if "gpu_peak_reserved_mb" in trials else None}


def stage_ray_kill(env: dict[str, str], work: Path) -> dict[str, Any]:
    """kill -9 of the driver while trials run, then --resume: every trial ends."""
    if ray_missing():
        return {"skipped": ray_missing()}
    from sweeper.rundir.layout import EXPERIMENT_DIR

    cmd = [sys.executable, "-m", "sweeper", "search", "--trials", "8", "--gpus-per-trial", "0.25", "--out",
           str(work), "--name", "killed"]
    p = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None and not list(
            (work / "killed").glob(f"{EXPERIMENT_DIR}/*/checkpoint_*")):
        time.sleep(0.5)
    p.kill()
    p.wait()
    resume_seconds = sweeper_cli("search", "--resume", "--name", "killed", "--out", str(work), env=env, check=False)
    trials = read_trials(work / "killed")
    statuses = None if trials is None else trials.status.value_counts().to_dict()
    return {"ok": statuses is not None and sum(statuses.values()) == 8 and set(statuses) <= {"TERMINATED"},
            "resume_seconds": round(resume_seconds, 1), "trials": None if trials is None else len(trials),
            "statuses": statuses}


def stage_full(env: dict[str, str], work: Path, seconds_left: float) -> dict[str, Any]:
    """scripts/checks/gpu_full.py with the time this stage may take; its figures are in results/gpu/full_gpu.json."""
    cmd = [sys.executable, "scripts/checks/gpu_full.py", "--work", str(work), "--deadline-s", str(int(seconds_left))]
    p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=seconds_left + 120)
    sys.stderr.write(p.stderr[-4000:])
    full = json.loads((OUT / "full_gpu.json").read_text()) if (OUT / "full_gpu.json").is_file() else {}
    return {"ok": p.returncode == 0, "rc": p.returncode, "file": "results/gpu/full_gpu.json",
            "stages": {k: ("skipped" if "skipped" in v else "ok" if v.get("ok", True) else "failed")
                       for k, v in full.items() if isinstance(v, dict) and k not in ("profile_top",)}}


def table(result: dict[str, Any]) -> str:
    rows = [("card", f"{result['device']} (compute capability {'.'.join(map(str, result['capability']))}), "
                     f"torch {result['torch']}")]
    c = result.get("context", {})
    if c.get("context_mb") is not None:
        rows.append(("CUDA context per process", f"{c['context_mb']:.0f} MB (the caps keep back {c['kept_back_mb']:.0f})"))
    rows.append(("tests/training/test_gpu.py", result.get("tests", {}).get("summary") or json.dumps(result.get("tests"))))
    r = result.get("ray", {})
    rows.append(("search, 16 trials at 0.25 GPU", r.get("skipped") or r.get("error") or
                 f"{r['seconds']} s; {r['statuses']} on {r['devices']}; OOM {r['out_of_memory']}; GPU util mean "
                 f"{r.get('gpu_util_mean')}%, peak {r.get('gpu_peak_memory_mb')} MB"))
    f = result.get("full", {})
    rows.append(("full-size run (results/gpu/full_gpu.json)", f.get("skipped") or json.dumps(f.get("stages"))))
    b = result.get("baseline", {})
    if "seconds" in b:
        rows += [("baseline 2 epochs (s): GPU cached / GPU uncached / CPU cached",
                  " / ".join(str(b["seconds"][k]) for k in ("gpu_cached", "gpu_uncached", "cpu_cached"))),
                 ("max metric diff GPU cached vs uncached", f"{b['gpu_cached_vs_uncached_max_diff']:.2e}"),
                 ("max metric diff GPU vs CPU", f"{b['gpu_vs_cpu_max_diff']:.2e}")]
    else:
        rows.append(("baseline", b.get("skipped") or b.get("error", "?")))
    t = result.get("trainers", {})
    for key in ("amp_off", "amp_on"):
        x = t.get(key, {})
        if "trainers" in x:
            peaks = [r.get("peak_reserved_mb") for r in x["trainers"] if r.get("ok")] or [float("nan")]
            rows.append((f"4 trainers at 0.25 share, AMP {key[4:]}",
                         f"{x['wall_seconds']} s; peak reserved per trainer {min(peaks):.0f}-{max(peaks):.0f} MB; "
                         f"GPU util mean {x['gpu_util_mean']}%; failures {sum(not r.get('ok') for r in x['trainers'])}"))
        else:
            rows.append((f"4 trainers, AMP {key[4:]}", t.get("skipped") or x.get("error", "?")))
    k = t.get("kill_resume", {})
    if k:
        rows.append(("trainer SIGKILL + resume", k.get("error") or f"killed after {k.get('killed_after_epochs')} "
                     f"epoch(s); max val IoU diff vs uninterrupted {k.get('max_val_iou_diff')}"))
    rk = result.get("ray_kill", {})
    rows.append(("search SIGKILL + --resume", rk.get("skipped") or f"{rk.get('statuses')} after resume "
                                                                    f"({rk.get('resume_seconds')} s)"))
    return "\n".join(["| check | measured |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA GPU here: nothing to check (run it on a machine with an NVIDIA GPU)",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    budget = float(os.environ.get("GPU_CHECK_SECONDS", "540"))  # gpu_check.sh's limit, less the table and margin
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                              "capability": list(torch.cuda.get_device_capability(0)),
                              "total_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)}
    with work_dir(None, prefix="gpu_check-") as work:
        env = {**os.environ, "PYTHONPATH": str(REPO), "SWEEPER_CACHE": str(work / "cache")}
        left = lambda: budget - (time.perf_counter() - started)  # noqa: E731
        # (name, seconds it needs, what it runs); the full-size run gets what the later stages leave it
        stages = [("context", 15, lambda: stage_context(env)),
                  ("tests", 90, lambda: stage_tests(env)),
                  ("ray", 75, lambda: stage_ray(env, work / "runs")),
                  ("full", 200, lambda: stage_full(env, work / "full", left() - 70)),
                  ("baseline", 60, lambda: stage_baseline(env, work)),
                  ("trainers", 70, lambda: stage_trainers(env)),
                  ("ray_kill", 80, lambda: stage_ray_kill(env, work / "runs"))]
        run_stages(stages, result, seconds_left=left, out_file=OUT / "gpu_check.json", tag="gpu_check")
    result["seconds"] = round(time.perf_counter() - started, 1)
    (OUT / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    try:
        print(table(result))
    except (KeyError, TypeError, ValueError) as e:
        print(f"(table incomplete: {e}; see {OUT / 'gpu_check.json'})")
    failed = [k for k, v in result.items() if isinstance(v, dict) and (v.get("ok") is False or (
        k == "tests" and v.get("rc") != 0) or "skipped" in v)]
    b = result.get("baseline", {})
    if b.get("gpu_cached_vs_uncached_max_diff", 0) >= 1e-4:
        failed.append("baseline")
    print(f"gpu_check: {'every stage ok' if not failed else 'not ok: ' + ', '.join(failed)} "
          f"({result['seconds']:.0f} s)")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
