"""The GPU check: every CUDA path of the product on one GPU, in under 8 minutes. Run by scripts/gpu_check.sh.

Stages (each result lands in results/gpu/gpu_check.json, a table is printed at the end):
  tests      tests/test_gpu.py (pytest when installed, else its own runner)
  baseline   `sweeper baseline --epochs 2` cached and --no-cache on the GPU, and cached on the CPU:
             per-epoch metrics compared (GPU cached vs uncached must agree within 1e-4)
  trainers   four trainer processes at once, each capped to a quarter of the GPU, AMP off and on,
             with nvidia-smi sampled; a SIGKILL and resume of a trainer (scripts/gpu_trainers.py)
  ray        where Ray and Optuna import: a 16-trial `search` at --gpus-per-trial 0.25 with nvidia-smi
             sampled, then a search killed with SIGKILL and continued with --resume. Skipped, and said
             so, where they do not.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, log, sweeper_cli, work_dir  # noqa: E402

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
    cmd = ([sys.executable, "-m", "pytest", "-q", "tests/test_gpu.py"] if has_pytest
           else [sys.executable, "tests/test_gpu.py"])
    p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    print(p.stdout[-3000:], file=sys.stderr)
    return {"runner": "pytest" if has_pytest else "tests/test_gpu.py", "rc": p.returncode,
            "summary": (p.stdout.strip().splitlines() or [""])[-1]}


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """A baseline run's per-epoch records."""
    from sweeper.files import read_jsonl
    from sweeper.results import METRICS_FILE

    return read_jsonl(run / METRICS_FILE)


def read_trials(run: Path):
    """A sweep's trials table, None when the sweep wrote none (it failed before its tables)."""
    from sweeper.files import read_csv
    from sweeper.results import TRIALS_CSV

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
    script = [sys.executable, "scripts/gpu_trainers.py"]
    return {"amp_off": run_json([*script, "--procs", "4", "--share", "0.25"], env),
            "amp_on": run_json([*script, "--procs", "4", "--share", "0.25", "--amp"], env),
            "kill_resume": run_json([*script, "--kill-resume"], env)}


def stage_ray(env: dict[str, str], work: Path) -> dict[str, Any]:
    missing = [m for m in ("ray", "optuna") if importlib.util.find_spec(m) is None]
    if missing:
        return {"skipped": f"{' and '.join(missing)} not installed: the Ray part was skipped"}
    from gpu_trainers import GpuSampler
    from sweeper.results import EXPERIMENT_DIR

    out: dict[str, Any] = {}
    with GpuSampler() as sampler:
        seconds = sweeper_cli("search", "--trials", "16", "--gpus-per-trial", "0.25", "--out", str(work),
                              "--name", "gpu16", env=env, check=False)
    trials = read_trials(work / "gpu16")
    out["search16"] = {"seconds": round(seconds, 1), **sampler.summary(),
                       "trials": None if trials is None else len(trials),
                       "statuses": None if trials is None else trials.status.value_counts().to_dict(),
                       "devices": None if trials is None else trials.device.dropna().unique().tolist(),
                       "out_of_memory": None if trials is None else int(trials.out_of_memory.sum())}
    # kill -9 of the driver while trials run, then --resume
    cmd = [sys.executable, "-m", "sweeper", "search", "--trials", "8", "--gpus-per-trial", "0.25", "--out",
           str(work), "--name", "killed"]
    p = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list((work / "killed").glob(f"{EXPERIMENT_DIR}/*/checkpoint_*")):
        time.sleep(0.5)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    resume_seconds = sweeper_cli("search", "--resume", "--name", "killed", "--out", str(work), env=env, check=False)
    trials = read_trials(work / "killed")
    out["kill_resume"] = {"resume_seconds": round(resume_seconds, 1),
                          "trials": None if trials is None else len(trials),
                          "statuses": None if trials is None else trials.status.value_counts().to_dict()}
    return out


def table(result: dict[str, Any]) -> str:
    rows = [("card", result["device"]), ("tests/test_gpu.py", result["tests"]["summary"])]
    b = result["baseline"]
    rows += [("baseline 2 epochs (s): GPU cached / GPU uncached / CPU cached",
              " / ".join(str(b["seconds"][k]) for k in ("gpu_cached", "gpu_uncached", "cpu_cached"))),
             ("max metric diff GPU cached vs uncached", f"{b['gpu_cached_vs_uncached_max_diff']:.2e}"),
             ("max metric diff GPU vs CPU", f"{b['gpu_vs_cpu_max_diff']:.2e}")]
    for key in ("amp_off", "amp_on"):
        t = result["trainers"][key]
        if "trainers" in t:
            peaks = [r.get("peak_reserved_mb") for r in t["trainers"] if r.get("ok")]
            rows.append((f"4 trainers at 0.25 share, AMP {key[4:]}",
                         f"{t['wall_seconds']} s; peak reserved per trainer {min(peaks):.0f}-{max(peaks):.0f} MB; "
                         f"GPU peak {t['gpu_peak_memory_mb']} MB, util mean {t['gpu_util_mean']}%; "
                         f"failures {sum(not r.get('ok') for r in t['trainers'])}"))
        else:
            rows.append((f"4 trainers, AMP {key[4:]}", t.get("error", "?")))
    k = result["trainers"]["kill_resume"]
    rows.append(("trainer SIGKILL + resume", f"killed after {k.get('killed_after_epochs')} epoch(s); max val IoU "
                                             f"diff vs uninterrupted {k.get('max_val_iou_diff')}"))
    r = result["ray"]
    rows.append(("Ray", r.get("skipped") or json.dumps(r)))
    return "\n".join(["| check | measured |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA GPU here: nothing to check (run it on a machine with an NVIDIA GPU)",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                              "capability": list(torch.cuda.get_device_capability(0))}
    with work_dir(None, prefix="gpu_check-") as work:
        env = {**os.environ, "PYTHONPATH": str(REPO), "SWEEPER_CACHE": str(work / "cache")}
        for name, fn in (("tests", lambda: stage_tests(env)), ("baseline", lambda: stage_baseline(env, work)),
                         ("trainers", lambda: stage_trainers(env)), ("ray", lambda: stage_ray(env, work / "runs"))):
            log(f"gpu_check: {name}")
            try:
                result[name] = fn()
            except Exception as e:  # noqa: BLE001 - one failing stage must not hide the others' figures
                result[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            OUT.mkdir(parents=True, exist_ok=True)
            (OUT / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    result["seconds"] = round(time.perf_counter() - started, 1)
    (OUT / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    try:
        print(table(result))
    except (KeyError, TypeError, ValueError) as e:
        print(f"(table incomplete: {e}; see {OUT / 'gpu_check.json'})")
    ok = result["tests"].get("rc") == 0 and result["baseline"].get("gpu_cached_vs_uncached_max_diff", 1) < 1e-4
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
