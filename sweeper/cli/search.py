"""`sweeper search` and `sweeper confirm`: their checks (name, resources, resume against what the sweep was
started with), the sweep itself (sweeper.search.driver) and what they print. Heavy modules (Ray, torch) are imported
inside the commands, so `--help` and a refused start stay fast.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from sweeper.cli.inputs import Default, describe_inputs, in_run_folder, prepare
from sweeper.errors import SweeperError


def cmd_search(args: argparse.Namespace) -> int:
    if args.resume and not args.name:
        raise SweeperError("--resume needs --name NAME of the sweep to continue")
    name = args.name or time.strftime("sweep-%Y%m%d-%H%M%S")
    if name in (".", "..") or not all(c.isalnum() or c in "-_." for c in name):
        raise SweeperError(f"--name '{name}' must be a folder name of letters, digits, '-', '_' and '.' "
                           f"(not '.' or '..')")
    run_dir = args.out / name
    with TermAsCtrlC() as term:
        try:
            return in_run_folder(run_dir, f"sweeper search --name {name}", lambda: _search_in(args, name, run_dir, term))
        except KeyboardInterrupt:  # before the sweep started: nothing to resume yet
            if not term.received:
                raise
            again = f"sweeper search {'--resume ' if args.resume else ''}--name {name} --out {args.out}"
            print(f"terminated (SIGTERM) before the sweep started: nothing ran; the same command starts it: {again}",
                  file=sys.stderr)
            return 143


class TermAsCtrlC:
    """SIGTERM (timeout, Slurm, Kubernetes, docker stop) handled as Ctrl-C: it sends this process SIGINT, so
    Ray Tune stops the sweep with its state and the trials' last checkpoints saved, and `received` tells the
    command to exit 143 (128 + SIGTERM) instead of 130. Ray's driver installs its own SIGTERM handler (a stack
    dump, then an abort) when it starts: `install` again after ray.init."""

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None

    def _on_term(self, signum, frame) -> None:
        self.received = True
        os.kill(os.getpid(), signal.SIGINT)  # whoever handles Ctrl-C now (Ray Tune during the sweep) does

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)

    def __enter__(self) -> "TermAsCtrlC":
        self._previous = signal.getsignal(signal.SIGTERM)
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)


def _search_in(args: argparse.Namespace, name: str, run_dir: Path, term: TermAsCtrlC) -> int:
    """cmd_search's work, with `run_dir` owned by this process."""
    import resource

    from sweeper import files
    from sweeper.data.classes import LabelMode
    from sweeper.data.dataset import dataset_fingerprint
    from sweeper.rundir import layout, records, resume
    from sweeper.rundir.layout import SPACE_COPY, SWEEP_FILE
    from sweeper.search.driver import run_search
    from sweeper.search.options import SearchOptions
    from sweeper.search.ray_local import (check_address, check_dashboard, check_resources, cluster_nodes, start_ray,
                                          trial_resources)
    from sweeper.search.space import default_space_path, find_space, load_space
    from sweeper.search.tables import summary_table
    from sweeper.search.trial import trial_bytes

    quiet_optuna()

    sweep_file = run_dir / SWEEP_FILE
    if args.resume:  # the one decision (sweeper.rundir.resume), before any work
        resumed = resume.decide(run_dir, given=_resume_options(args),
                                given_space=find_space(args.space) if args.space is not None else None)
        saved, recorded = resumed.saved, resumed.recorded
        space = load_space(resumed.space_path)
        args.data, args.backbone = Path(recorded["data_root"]), recorded["backbone"]
        args.weights = args.weights or resumed.weights_path
        args.cache_dtype = recorded.get("cache_dtype", args.cache_dtype)
        args.allow_unknown_ids = recorded.get("allow_unknown_ids", args.allow_unknown_ids)
        trials, seed = recorded["trials"], recorded["seed"]
        overrides: dict[str, Any] = resumed.trial_overrides
    else:
        if any(p.name != layout.LOCK_FILE for p in run_dir.iterdir()):
            raise SweeperError(f"{run_dir}: a sweep of that name exists; pass --resume to continue it, or another --name")
        space = load_space(find_space(args.space) if args.space else default_space_path())
        check_space_heads(space)
        trials = args.trials or space.trials
        seed = args.seed if args.seed is not None else 0
        overrides = trial_overrides(args)  # trial settings from the command line, on top of the space
    if "label_mode" in space.param_names or "image_height" in space.param_names or "image_width" in space.param_names:
        raise SweeperError(f"{space.source}: label_mode and the image size decide the cached data; "
                           f"set them under 'fixed', not 'params'")
    base = space.to_config(space.baseline_point()).replace(**overrides)
    if args.gpus_per_trial is not None and (args.gpus_per_trial < 0 or (
            args.gpus_per_trial > 1 and not float(args.gpus_per_trial).is_integer())):
        raise SweeperError(f"--gpus-per-trial must be a fraction in [0, 1] or a whole number, "
                           f"got {args.gpus_per_trial:g}")
    if args.address:
        check_address(args.address)  # in seconds, before the cache is built; ray.init would retry for ever
    # what the trials may use: the cluster's nodes (joined here with --address: a cluster that refuses this
    # driver says so at once, before the cache is built), not this machine's
    nodes = cluster_nodes(args.address)
    if args.address:
        term.install()  # over the handler Ray's driver installed
    # concurrency and CPUs per trial change no result: a resume may change them (recorded), else keeps them
    ran = saved.get("options", {}) if args.resume else {}
    gpus, concurrent = trial_resources(nodes, device=overrides.get("device", args.device),
                                       gpus_per_trial=args.gpus_per_trial,
                                       max_concurrent=args.max_concurrent or ran.get("max_concurrent"),
                                       default_concurrent=space.max_concurrent)
    cpus = args.cpus_per_trial or ran.get("cpus_per_trial") or 1.0
    opts = SearchOptions(name=name, out_root=args.out.resolve(), trials=trials, max_concurrent=concurrent,
                         gpus_per_trial=gpus, cpus_per_trial=cpus, seed=seed,
                         address=args.address, resume=args.resume, dashboard=args.dashboard)
    files.ensure_writable_dir(run_dir)
    check_resources(opts, nodes)
    if not args.address:
        check_dashboard(opts)
    planned = plan_at_start(args, space, gpus, trials, concurrent)  # may refuse a share that cannot hold a trial

    started = time.perf_counter()
    p = prepare(args, height=base.image_height, width=base.image_width, label_mode=base.label_mode,
                train_variants=space.train_variants(base.label_mode.value))
    inputs = {"data_root": str(p.source.root.resolve()), "backbone": p.backbone.name,
              "weights_digest": p.backbone.weights_digest, "label_mode": LabelMode(base.label_mode).value,
              "image_size": [base.image_height, base.image_width], "cache_dtype": str(args.cache_dtype),
              "allow_unknown_ids": bool(args.allow_unknown_ids), "amp": bool(base.amp)}
    if args.resume:
        resumed.check_loaded(inputs)  # weights, label mode and size as this resume loaded them
    else:
        recorded = {**inputs, "data_fingerprint": dataset_fingerprint(p.source.root),
                    "space": files.file_sha256(space.source), "trials": trials, "seed": seed,
                    "max_concurrent": concurrent, "study_name": name}  # the study keeps it on a resume
    data_bytes = trial_bytes(p.data)
    start_ray(opts, data_bytes=data_bytes)
    term.install()  # over the handler Ray's driver installed
    check_resources(opts)  # the cluster as Ray sees it: with --address, other machines' CPUs and GPUs
    if not args.resume:
        import shutil

        shutil.copyfile(space.source, run_dir / SPACE_COPY)
    info = {"command": "search", "options": {k: (str(v) if isinstance(v, Path) else v)
                                             for k, v in opts.__dict__.items()},
            "space": {"source": str(space.source), "metric": space.metric, "mode": space.mode},
            "started_with": recorded, "trial_overrides": overrides,  # what a resume must match, and reuses
            **describe_inputs(p, args), "object_store": {"trial_bytes": data_bytes}, "versions": records.versions()}
    files.write_json(sweep_file, info)
    print(f"sweep {name}: {trials} trials ({space.metric}, {space.mode}), ASHA grace {space.asha.grace_period} / "
          f"max {space.asha.max_epochs} epochs / factor {space.asha.reduction_factor}; "
          f"{len(p.data.train.labels)} train / {len(p.data.val.labels)} val images"
          f"{' (SYNTHETIC data)' if p.source.synthetic else ''}; backbone {p.backbone.name}; "
          f"{concurrent} at once, {gpus:g} GPU + {cpus:g} CPU each -> {run_dir}", file=sys.stderr)
    resume = f"sweeper search --resume --name {name} --out {args.out}"
    try:
        table = run_search(space, p.data, opts, progress=not args.quiet, trial_overrides=overrides)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside Ray's own handler
        table = None
    # Ray Tune ends the sweep early on Ctrl-C (its state saved) and returns as if it had finished.
    ended = None if table is None else int(table.status.isin(["TERMINATED", "ERROR"]).sum()) if len(table) else 0
    if ended is None or ended < trials:
        print(f"{'terminated (SIGTERM)' if term.received else 'interrupted'}: {'?' if ended is None else ended} "
              f"of {trials} trials ended; continue with: {resume}", file=sys.stderr)
        return 143 if term.received else 130
    info["driver_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info["wall_seconds"] = time.perf_counter() - started
    if planned is not None and not args.resume:  # measured against planned: the plan's accuracy, recorded
        info["plan"] = {**planned, "measured_seconds": round(info["wall_seconds"], 1),
                        "measured_over_planned": round(info["wall_seconds"] / planned["sweep_seconds"], 2)}
        print(f"plan: measured {info['wall_seconds'] / 60:.1f} min against {planned['sweep_seconds'] / 60:.1f} min "
              f"planned ({info['plan']['measured_over_planned']:g}x)", file=sys.stderr)
    files.write_json(sweep_file, info)
    from sweeper.report import write_report

    report = write_report(run_dir)
    print(summary_table(table, space))
    print(f"trials: {run_dir / 'trials.csv'}; per epoch: {run_dir / 'history.csv'}; "
          f"study: sqlite:///{(run_dir / 'study.db').resolve()}")
    print(f"report: {report}")
    return 0


def trial_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """A new sweep's trial settings from its command line, on top of the space (recorded, reused on resume).

    The device travels with them: a trial decides where it trains from its config and the GPUs Ray granted it.
    """
    overrides: dict[str, Any] = {"device": args.device}
    if args.label_mode:
        overrides["label_mode"] = args.label_mode
    if args.amp:
        overrides["amp"] = True
    if getattr(args, "gpu_memory", None):
        overrides["gpu_memory_gib"] = float(args.gpu_memory)
    return overrides


def plan_at_start(args: argparse.Namespace, space, gpus: float, trials: int, concurrent: int) -> dict | None:
    """The plan's part of a search's start: a recent `sweeper plan` for the same data, device and space
    (OUT/plan.json) gives the summary line and the projected time, and refuses a GPU share that its
    measured trial cannot fit; without one, the line says how to get it. The cache's disk is checked by
    the cache itself, before it builds anything. Returns what sweep.json records of the plan."""
    from sweeper.search import plan

    path = args.out / plan.PLAN_FILE
    recent = plan.load_recent_plan(path, key=plan.plan_key(args, space))
    if recent is None:
        print("plan: none for this data, device and space: `sweeper plan` projects time and memory first",
              file=sys.stderr)
        return None
    import torch

    if gpus > 0 and torch.cuda.is_available():  # the card the plan measured is this machine's (a local sweep)
        card = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        plan.check_share_fits(recent, gpus, card, int(args.gpu_memory * 2**30) if args.gpu_memory else None, path)
    o = recent["options"]
    if (o["trials"], o["max_concurrent"], o["gpus_per_trial"]) != (trials, concurrent, gpus):
        print(f"plan: {path} was made for {o['trials']} trials, {o['max_concurrent']} at once, "
              f"{o['gpus_per_trial']:g} GPU each; its time does not apply: run `sweeper plan` with these options",
              file=sys.stderr)
        return None
    print(plan.plan_summary(recent), file=sys.stderr)
    return {"file": str(path), "sweep_seconds": recent["time"]["sweep_seconds"],
            "trial_epochs": recent["trial_epochs"], "trial_host_mb": recent["resources"]["trial_host_mb"]}


def quiet_optuna() -> None:
    """Optuna's per-trial INFO lines off for this process: the sweep's progress lines say what happens."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def check_space_heads(space) -> None:
    """Every head a space can pick is one `sweeper.model.head` builds: refused before any work, not in a trial."""
    from sweeper.model.head import check_head_names

    spec = next((p for p in space.params if p.name == "head"), None)
    names = list(spec.choices) if spec is not None else [space.fixed.get("head", "convnext_phase1")]
    check_head_names(map(str, names), source=f"{space.source}: {'params' if spec else 'fixed'}.head")


def _resume_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on a resume's command line that decide results: each must equal the sweep's."""
    given: dict[str, Any] = {}
    if args.data is not None:
        given["data_root"] = str(Path(args.data).resolve())
    if args.backbone != "auto":
        given["backbone"] = args.backbone
    for field in ("trials", "seed", "label_mode"):  # the space: resume.decide's own check; concurrency may change
        if getattr(args, field) is not None:
            given[field] = getattr(args, field)
    if args.amp:
        given["amp"] = True
    if args.allow_unknown_ids:
        given["allow_unknown_ids"] = True
    if not isinstance(args.cache_dtype, Default):
        given["cache_dtype"] = args.cache_dtype
    return given


def _load_sweep(run_dir: Path) -> dict[str, Any]:
    """A sweep folder's sweep.json, or a one-line error saying the folder is not a sweep."""
    from sweeper.files import read_json
    from sweeper.rundir.layout import SWEEP_FILE

    path = Path(run_dir) / SWEEP_FILE
    if not path.is_file():
        raise SweeperError(f"{run_dir}: not a sweep folder (missing {SWEEP_FILE})")
    return read_json(path)


def _sweep_inputs(run_dir: Path, saved: dict[str, Any]) -> argparse.Namespace:
    """The data and backbone options a sweep ran with, to rebuild the same inputs."""
    return argparse.Namespace(
        data=Path(saved["data"]["root"]), backbone=saved["backbone"]["name"],
        weights=Path(saved["backbone"]["weights_path"]) if saved["backbone"].get("weights_path") else None,
        cache_dir=Path(saved["cache"]["root"]), cache_dtype=saved["cache"]["dtype"], allow_unknown_ids=True,
        quiet=False)


def cmd_confirm(args: argparse.Namespace) -> int:
    _load_sweep(args.run)  # a sweep folder, before taking its lock
    return in_run_folder(args.run, f"sweeper confirm {args.run}", lambda: _confirm_in(args))


def _confirm_in(args: argparse.Namespace) -> int:
    """cmd_confirm's work, with the run folder owned by this process."""
    from sweeper.rundir.layout import SPACE_COPY
    from sweeper.search.confirm import run_confirm
    from sweeper.search.options import SearchOptions
    from sweeper.search.ray_local import check_address
    from sweeper.search.space import load_space

    if args.address:
        check_address(args.address)
    saved = _load_sweep(args.run)
    space = load_space(args.run / SPACE_COPY)
    inputs = _sweep_inputs(args.run, saved)
    inputs.quiet = args.quiet
    # the sweep's own label mode (and other command-line settings of its trials), as its trials ran them
    base = space.to_config(space.baseline_point()).replace(**(saved.get("trial_overrides") or {}))
    p = prepare(inputs, height=base.image_height, width=base.image_width, label_mode=base.label_mode,
                train_variants=space.train_variants(base.label_mode.value))
    o = saved["options"]
    opts = SearchOptions(name=args.run.name, out_root=args.run.parent.resolve(), trials=0,
                         max_concurrent=args.max_concurrent or o["max_concurrent"],
                         gpus_per_trial=o["gpus_per_trial"], cpus_per_trial=o["cpus_per_trial"], seed=0,
                         address=args.address)
    print(f"confirm: baseline + top {args.top} trials of {args.run}, {args.seeds} seeds each "
          f"({(args.top + 1) * args.seeds} runs)", file=sys.stderr)
    summary = run_confirm(args.run, space, p.data, opts, top=args.top, seeds=args.seeds, progress=not args.quiet)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    from sweeper.report import write_report

    print(f"gain counts as real when it exceeds twice the larger seed-to-seed standard deviation; "
          f"details in {args.run / 'confirm.csv'}; report {write_report(args.run)}")
    return 0
