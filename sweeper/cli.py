"""Command line: `python -m sweeper {synth,baseline,search,report,confirm,evaluate}`.

The CLI is the only place that prints. Input errors (`SweeperError`) become
one line on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from sweeper.errors import SweeperError

from sweeper.config import PUBLISHED_BASELINE_IOU

log = logging.getLogger("sweeper")


@dataclass(frozen=True)
class DataSource:
    """Where a command's data comes from and what it is."""

    root: Path
    synthetic: bool  # True for the embedded synthetic default or any `synth` output


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT like 960x540, got '{text}'") from None
    return w, h


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {v}")
    return v


class _Default(str):
    """A string option's default, told apart from the same value given on the command line (a resume
    refuses options that differ from the sweep's, and must know which ones were given)."""


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return v


def add_data_options(p: argparse.ArgumentParser, *, cache_switch: bool = False, cache_dtype: str = "float32") -> None:
    """Options shared by every command that reads a dataset and runs the backbone."""
    g = p.add_argument_group("data and backbone")
    g.add_argument("--data", type=Path, help="dataset root with train/ and val/ (default: the embedded synthetic set)")
    g.add_argument("--backbone", default="auto",
                   help="backbone name: dinov2_vits14, dinov2_vitb14, dinov2_vitl14, random_vits14; 'auto' "
                        "(default) = random_vits14 on synthetic data, dinov2_vits14 otherwise")
    g.add_argument("--weights", type=Path, help="backbone checkpoint in Meta's format (else torch hub cache/download)")
    g.add_argument("--label-mode", choices=["phase1", "nearest"], default=None,
                   help="mask resizing: phase1 (bilinear quirk, default) or nearest (exact ids)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--cache-dir", type=Path, help="feature and data cache (default: $SWEEPER_CACHE or ~/.cache/sweeper)")
    g.add_argument("--cache-dtype", choices=["float32", "float16"], default=_Default(cache_dtype),
                   help=f"storage type of cached tokens (float16 halves disk and memory; default {cache_dtype})")
    g.add_argument("--allow-unknown-ids", action="store_true",
                   help="map unknown raw mask ids to class 0 as phase 1 does, instead of failing")
    if cache_switch:
        g.add_argument("--no-cache", action="store_true",
                       help="run the backbone inside the training loop like phase 1 (slow; same numbers)")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one sub-command per job."""
    from sweeper import __version__

    parser = argparse.ArgumentParser(prog="sweeper", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sweeper {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic desert dataset in the Duality layout")
    p.add_argument("out", type=Path, metavar="OUT_DIR")
    p.add_argument("--train", type=_positive_int, default=64, help="train scenes (default 64)")
    p.add_argument("--val", type=_positive_int, default=16, help="val scenes (default 16)")
    p.add_argument("--test", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=_size, default=(960, 540), help="WIDTHxHEIGHT (default 960x540)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("baseline", help="reproduce the phase-1 run (SGD 1e-4, 10 epochs, batch 2, unweighted CE)")
    add_data_options(p, cache_switch=True)
    p.add_argument("--out", type=Path, help="output folder (default: results/baseline-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (else refused)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="epochs (default: phase 1's 10)")
    p.add_argument("--seed", type=int, default=0, help="head initialisation and shuffling seed")
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("search", help="phase 2: Ray Tune trials, Optuna TPE proposals, ASHA early stopping")
    add_data_options(p, cache_dtype="float16")  # same trial scores, half the memory: README "Running on a GPU"
    p.add_argument("--space", type=Path, help="search space YAML, or the name of a shipped one: phase2 (default), "
                                              "smoke")
    p.add_argument("--trials", type=_positive_int, help="total trials incl. the baseline trial 0 (default: the space's)")
    p.add_argument("--name", help="run name: results go to OUT/NAME (default: sweep-<time>)")
    p.add_argument("--out", type=Path, default=Path("results"), help="results root (default: results)")
    p.add_argument("--gpus-per-trial", type=float, help="GPU share per trial (default: 0.25 with a GPU, else 0)")
    p.add_argument("--cpus-per-trial", type=_positive_float, default=1.0, help="CPUs per trial, also its torch threads (default 1)")
    p.add_argument("--max-concurrent", type=_positive_int, help="trials at once (default: the space's on CPU, "
                                                                   "1/gpus-per-trial per GPU)")
    p.add_argument("--address", help="join a running Ray cluster (e.g. HEAD_IP:6379) instead of starting one")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard with a local cluster")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep OUT/NAME (needs --name)")
    p.add_argument("--seed", type=int, help="TPE sampler seed (default 0)")
    p.add_argument("--amp", action="store_true", help="mixed precision for the head on CUDA (no effect on CPU)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("confirm", help="re-train the top configs and the baseline with several seeds: is the gain real?")
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="a sweep folder (results/NAME)")
    p.add_argument("--top", type=_positive_int, default=3, help="how many of the best trials (default 3)")
    p.add_argument("--seeds", type=_positive_int, default=3, help="seeds per config (default 3)")
    p.add_argument("--max-concurrent", type=_positive_int, help="trials at once (default: as the sweep)")
    p.add_argument("--address", help="join a running Ray cluster instead of starting one")
    p.add_argument("--device", default="auto", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_confirm)

    p = sub.add_parser("report", help="(re)build RUN_DIR/report/ from saved results: HTML page, summary, figures")
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="a sweep or baseline folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("evaluate", help="score a run's head on a test folder (the phase-1 test script's counterpart)")
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="a baseline folder or a sweep folder")
    p.add_argument("--data", type=Path, help="test folder (Color_Images/, Segmentation/) or a root with test/ "
                                             "(default: the test/ split of the data the run trained on)")
    p.add_argument("--trial", default="best", help="sweep trial number, or 'best' (default)")
    p.add_argument("--epoch", choices=("best", "last"), default="best",
                   help="a sweep trial's head from its best epoch (default: the epoch its score is from) "
                        "or its last")
    p.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/evaluation/<trial>)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--cache-dir", type=Path, help="feature cache (default: $SWEEPER_CACHE or ~/.cache/sweeper)")
    p.add_argument("--samples", type=int, default=5, help="side-by-side figures to draw (default 5)")
    p.add_argument("--allow-unknown-ids", action="store_true", help="map unknown mask ids to class 0")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write a run's head as segmentation_head.pth + config.json for use elsewhere")
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="a baseline folder or a sweep folder")
    p.add_argument("--trial", default="best", help="sweep trial number, or 'best' (default)")
    p.add_argument("--epoch", choices=("best", "last"), default="best",
                   help="a sweep trial's head from its best epoch (default) or its last")
    p.add_argument("--out", type=Path, required=True, help="output folder (refused if it holds an export)")
    p.set_defaults(func=cmd_export)
    return parser


def default_space_path() -> Path:
    """The phase-2 space shipped inside the package (found from any folder, installed or not)."""
    from sweeper.space import SPACES_DIR

    return SPACES_DIR / "phase2.yaml"


def resolve_data(args: argparse.Namespace) -> DataSource:
    """The dataset root: --data, or the embedded synthetic set (generated once into the cache)."""
    from sweeper import synth
    from sweeper.features import default_cache_root

    if args.data is None:
        cache_root = args.cache_dir or default_cache_root()
        log.info("no --data given: using the embedded SYNTHETIC desert set (not the real Duality data)")
        return DataSource(root=synth.default_dataset(cache_root / "data"), synthetic=True)
    root = Path(args.data)
    if not root.is_dir():
        raise SweeperError(f"{root}: --data folder does not exist")
    return DataSource(root=root, synthetic=synth.is_synthetic(root))


def resolve_backbone(args: argparse.Namespace, data: DataSource):
    """The frozen backbone named by --backbone ('auto' picks by the kind of data)."""
    from sweeper.backbone import create_backbone

    name = args.backbone
    if name == "auto":
        name = "random_vits14" if data.synthetic and args.weights is None else "dinov2_vits14"
    return create_backbone(name, weights=args.weights)  # an untrained backbone warns about itself


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (tests and notebooks swap it, and close the old one)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns one; always follow sys.stderr instead
        pass


class _RayNoise(logging.Filter):
    """Drops two Ray messages every search would print: a failed trial's full traceback (our progress line
    names the error; the traceback is in the trial's error.txt in the run folder) and the notice that a local
    Ray uses token authentication (it does, and stays so: only the notice goes)."""

    DROPPED = {
        "ray.tune.execution.tune_controller": "Trial task failed for trial ",
        "ray._private.authentication.authentication_token_setup": "Token authentication is enabled for this Ray",
    }

    def filter(self, record: logging.LogRecord) -> bool:
        prefix = self.DROPPED.get(record.name)
        return prefix is None or not str(record.msg).startswith(prefix)


def _configure_logging(quiet: bool) -> None:
    for name in _RayNoise.DROPPED:  # by name only: Ray is not imported here
        ray_log = logging.getLogger(name)
        if not any(isinstance(f, _RayNoise) for f in ray_log.filters):
            ray_log.addFilter(_RayNoise())
    for h in [h for h in log.handlers if isinstance(h, _StderrHandler)]:
        log.removeHandler(h)  # main() may run more than once in a process
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)  # our logger only: Ray, Optuna and tensorboardX keep their own levels
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


@dataclass(frozen=True)
class Prepared:
    """A command's resolved inputs: data source, backbone, train/val data, cache folder."""

    source: DataSource
    backbone: Any
    data: Any  # sweeper.features.TrainData
    cache_root: Path


def prepare(args: argparse.Namespace, *, height: int, width: int, label_mode, use_cache: bool = True,
            train_variants=()) -> Prepared:
    """Resolve --data and --backbone and load train/val, building the feature cache on --device if needed.

    With the cache, the backbone is handed back on the CPU and its GPU memory released: trials never need it.
    """
    from sweeper.device import release_memory, resolve_device
    from sweeper.features import default_cache_root, load_train_data

    source = resolve_data(args)
    device = resolve_device(getattr(args, "device", "auto"))  # checked before the backbone loads
    backbone = resolve_backbone(args, source).to(device)
    cache_root = args.cache_dir or default_cache_root()
    data = load_train_data(source.root, backbone, height=height, width=width, label_mode=label_mode,
                           cache_root=cache_root, use_cache=use_cache, dtype=args.cache_dtype,
                           allow_unknown=args.allow_unknown_ids, show_progress=not args.quiet,
                           train_variants=train_variants)
    if use_cache:
        backbone.to("cpu")
        release_memory()
    return Prepared(source, backbone, data.with_counts(), cache_root)


def describe_inputs(p: Prepared, args: argparse.Namespace) -> dict[str, Any]:
    """The data and backbone facts written next to every result."""
    return {
        "backbone": {"name": p.backbone.name, "description": p.backbone.description, "trained": p.backbone.trained,
                     "weights_digest": p.backbone.weights_digest,
                     "weights_path": str(Path(args.weights).resolve()) if args.weights else None},
        "cache": {"root": str(Path(p.cache_root).resolve()), "dtype": args.cache_dtype},
        "data": {"root": str(p.source.root.resolve()), "synthetic": p.source.synthetic,
                 "train_images": len(p.data.train.labels), "val_images": len(p.data.val.labels),
                 "class_names": list(p.data.class_names), "train_pixel_counts": p.data.train_pixel_counts().tolist()},
    }


def cmd_synth(args: argparse.Namespace) -> int:
    from sweeper import synth
    from sweeper.progress import progress_bar

    total = args.train + args.val + args.test
    with progress_bar(total=total, desc="writing synthetic scenes", enabled=not args.quiet) as bar:
        out = synth.generate(args.out, train=args.train, val=args.val, test=args.test, seed=args.seed,
                             size=args.size, progress=lambda done, _total: bar.update(done - bar.n))
    print(f"wrote {args.train} train, {args.val} val, {args.test} test synthetic scenes to {out}")
    return 0


def in_run_folder(run_dir: Path, command: str, body: Callable[[], int]) -> int:
    """Run `body` owning `run_dir` (sweeper.runs.run_lock); a folder this call created and left empty goes."""
    from sweeper import files, runs

    fresh = not run_dir.exists()
    files.ensure_writable_dir(run_dir)
    try:
        with runs.run_lock(run_dir, command):
            return body()
    finally:
        if fresh:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # a start that failed before writing anything leaves no empty folder


def cmd_baseline(args: argparse.Namespace) -> int:
    from sweeper.config import TrainConfig

    overrides: dict[str, Any] = {"device": args.device, "seed": args.seed}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.label_mode is not None:
        overrides["label_mode"] = args.label_mode
    config = TrainConfig().replace(**overrides)
    out = args.out or Path("results") / time.strftime("baseline-%Y%m%d-%H%M%S")
    return in_run_folder(out, f"sweeper baseline --out {out}", lambda: _baseline_in(args, config, out))


def _baseline_in(args: argparse.Namespace, config, out: Path) -> int:
    """cmd_baseline's work, with `out` owned by this process."""
    from sweeper import files, results, runs
    from sweeper.report import write_report
    from sweeper.report.run_figures import phase1_plots
    from sweeper.train import train

    kept = [f for f in (results.CONFIG_FILE, results.METRICS_FILE, results.HEAD_FILE) if (out / f).exists()]
    if kept and not args.overwrite:
        raise SweeperError(f"{out}: holds a run already ({', '.join(kept)}); pass --overwrite to replace it, "
                           f"or choose another --out")
    p = prepare(args, height=config.image_height, width=config.image_width, label_mode=config.label_mode,
                use_cache=not args.no_cache)
    data_src, backbone, data = p.source, p.backbone, p.data
    files.write_json(out / results.CONFIG_FILE, {
        "command": "baseline", "config": config.to_dict(), **describe_inputs(p, args),
        "feature_cache_used": not args.no_cache, "versions": runs.versions(),
    })
    print(f"phase-1 baseline: {len(data.train.labels)} train / {len(data.val.labels)} val images"
          f"{' (SYNTHETIC data)' if data_src.synthetic else ''}, backbone {backbone.name}, "
          f"{config.epochs} epochs -> {out}", file=sys.stderr)

    def on_epoch(record: dict, head) -> None:
        files.append_jsonl(out / results.METRICS_FILE, record)
        train_iou = record.get("train_iou")
        print(f"epoch {record['epoch']:>3}/{config.epochs}  train loss {record['train_loss']:.4f}  "
              f"val loss {record['val_loss']:.4f}  "
              + (f"train IoU {train_iou:.4f}  " if train_iou is not None else "")
              + f"val IoU {record['val_iou']:.4f}  val mIoU {record['val_miou']:.4f}  "
              f"({record['epoch_seconds']:.1f} s)", file=sys.stderr, flush=True)

    (out / results.METRICS_FILE).unlink(missing_ok=True)  # a rerun into the same folder starts a fresh log
    if config.threads:  # this process's torch threads: set here, `train` changes no global state
        import torch
        torch.set_num_threads(config.threads)
    result = train(config, data, on_epoch=on_epoch)
    runs.save_head(out / results.HEAD_FILE, result.head_state)
    files.write_text_atomic(out / results.TEXT_FILE, results.evaluation_metrics_text(result.history))
    phase1_plots(out)
    report = write_report(out)
    best = result.best
    ref = "published phase-1 figure on the real data" if data_src.synthetic else "phase 1"
    print(f"best val IoU {best['val_iou']:.4f} at epoch {best['epoch']} "
          f"({ref}: {PUBLISHED_BASELINE_IOU}); val mIoU {best['val_miou']:.4f}; "
          f"{result.seconds:.0f} s; outputs in {out}; report {report}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    if args.resume and not args.name:
        raise SweeperError("--resume needs --name NAME of the sweep to continue")
    name = args.name or time.strftime("sweep-%Y%m%d-%H%M%S")
    if name in (".", "..") or not all(c.isalnum() or c in "-_." for c in name):
        raise SweeperError(f"--name '{name}' must be a folder name of letters, digits, '-', '_' and '.' "
                           f"(not '.' or '..')")
    run_dir = args.out / name
    return in_run_folder(run_dir, f"sweeper search --name {name}", lambda: _search_in(args, name, run_dir))


def _search_in(args: argparse.Namespace, name: str, run_dir: Path) -> int:
    """cmd_search's work, with `run_dir` owned by this process."""
    import resource

    from sweeper import files, results, runs
    from sweeper.device import gpu_count
    from sweeper.config import LabelMode
    from sweeper.data import dataset_fingerprint
    from sweeper.space import find_space, load_space
    from sweeper.results import SPACE_COPY, SWEEP_FILE
    from sweeper.cluster import check_address, check_dashboard, check_resources, local_nodes, start_ray
    from sweeper.results import summary_table
    from sweeper.trial import trial_bytes
    from sweeper.tune import SearchOptions, check_trusted, run_search

    sweep_file = run_dir / SWEEP_FILE
    if args.resume:
        if not sweep_file.is_file():
            raise SweeperError(f"{run_dir}: no sweep to resume here (missing {SWEEP_FILE})")
        check_trusted(run_dir)  # a resume unpickles Ray's state there: refuse before any work
        saved = files.read_json(sweep_file)
        recorded = _started_with(saved)
        space = load_space(run_dir / SPACE_COPY)
        runs.check_resume(run_dir, recorded, {"space": files.file_sha256(run_dir / SPACE_COPY)})
        runs.check_resume(run_dir, recorded, _resume_options(args))  # options given must be the sweep's own
        args.data, args.backbone = Path(recorded["data_root"]), recorded["backbone"]
        if args.weights is None and saved["backbone"].get("weights_path"):
            args.weights = Path(saved["backbone"]["weights_path"])
        args.cache_dtype = recorded.get("cache_dtype", args.cache_dtype)
        args.allow_unknown_ids = recorded.get("allow_unknown_ids", args.allow_unknown_ids)
        if "data_fingerprint" in recorded:  # the same folder, but are its files still the same?
            runs.check_resume(run_dir, recorded, {"data_fingerprint": dataset_fingerprint(args.data)})
        trials, seed = recorded["trials"], recorded["seed"]
        overrides: dict[str, Any] = dict(saved.get("trial_overrides") or {})
    else:
        if any(p.name != results.LOCK_FILE for p in run_dir.iterdir()):
            raise SweeperError(f"{run_dir}: a sweep of that name exists; pass --resume to continue it, or another --name")
        space = load_space(find_space(args.space) if args.space else default_space_path())
        trials = args.trials or space.trials
        seed = args.seed if args.seed is not None else 0
        overrides = {}  # trial settings from the command line, on top of the space
        if args.label_mode:
            overrides["label_mode"] = args.label_mode
        if args.amp:
            overrides["amp"] = True
    if "label_mode" in space.param_names or "image_height" in space.param_names or "image_width" in space.param_names:
        raise SweeperError(f"{space.source}: label_mode and the image size decide the cached data; "
                           f"set them under 'fixed', not 'params'")
    base = space.to_config(space.baseline_point()).replace(**overrides)
    has_gpu = gpu_count() > 0 and args.device != "cpu"
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else (0.25 if has_gpu else 0.0)
    if gpus < 0 or (gpus > 1 and not float(gpus).is_integer()):
        raise SweeperError(f"--gpus-per-trial must be a fraction in [0, 1] or a whole number, got {gpus}")
    concurrent = args.max_concurrent or (max(1, int(gpu_count() / gpus)) if gpus > 0
                                         else space.max_concurrent)
    opts = SearchOptions(name=name, out_root=args.out.resolve(), trials=trials, max_concurrent=concurrent,
                         gpus_per_trial=gpus, cpus_per_trial=args.cpus_per_trial, seed=seed,
                         address=args.address, resume=args.resume, dashboard=args.dashboard)
    files.ensure_writable_dir(run_dir)
    if args.address:
        check_address(args.address)  # in seconds, before the cache is built; ray.init would retry for ever
    else:
        check_resources(opts, local_nodes())  # a local Ray has exactly this machine's CPUs and GPUs
        check_dashboard(opts)

    started = time.perf_counter()
    p = prepare(args, height=base.image_height, width=base.image_width, label_mode=base.label_mode,
                train_variants=space.train_variants(base.label_mode.value))
    inputs = {"data_root": str(p.source.root.resolve()), "backbone": p.backbone.name,
              "weights_digest": p.backbone.weights_digest, "label_mode": LabelMode(base.label_mode).value,
              "image_size": [base.image_height, base.image_width], "cache_dtype": str(args.cache_dtype),
              "allow_unknown_ids": bool(args.allow_unknown_ids), "amp": bool(base.amp)}
    if args.resume:
        runs.check_resume(run_dir, recorded, inputs)  # weights, label mode and size as this resume loaded them
    else:
        recorded = {**inputs, "data_fingerprint": dataset_fingerprint(p.source.root),
                    "space": files.file_sha256(space.source), "trials": trials, "seed": seed,
                    "max_concurrent": concurrent}
    data_bytes = trial_bytes(p.data)
    start_ray(opts, data_bytes=data_bytes)
    check_resources(opts)  # the cluster as Ray sees it: with --address, other machines' CPUs and GPUs
    if not args.resume:
        import shutil

        shutil.copyfile(space.source, run_dir / SPACE_COPY)
    info = {"command": "search", "options": {k: (str(v) if isinstance(v, Path) else v)
                                             for k, v in opts.__dict__.items()},
            "space": {"source": str(space.source), "metric": space.metric, "mode": space.mode},
            "started_with": recorded, "trial_overrides": overrides,  # what a resume must match, and reuses
            **describe_inputs(p, args), "object_store": {"trial_bytes": data_bytes}, "versions": runs.versions()}
    files.write_json(sweep_file, info)
    print(f"sweep {name}: {trials} trials ({space.metric}, {space.mode}), ASHA grace {space.asha.grace_period} / "
          f"max {space.asha.max_epochs} epochs / factor {space.asha.reduction_factor}; "
          f"{len(p.data.train.labels)} train / {len(p.data.val.labels)} val images"
          f"{' (SYNTHETIC data)' if p.source.synthetic else ''}; backbone {p.backbone.name}; "
          f"{concurrent} at once, {gpus:g} GPU + {args.cpus_per_trial:g} CPU each -> {run_dir}", file=sys.stderr)
    resume = f"sweeper search --resume --name {name} --out {args.out}"
    try:
        table = run_search(space, p.data, opts, progress=not args.quiet, trial_overrides=overrides)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside Ray's own handler
        table = None
    # Ray Tune ends the sweep early on Ctrl-C (its state saved) and returns as if it had finished.
    ended = None if table is None else int(table.status.isin(["TERMINATED", "ERROR"]).sum()) if len(table) else 0
    if ended is None or ended < trials:
        print(f"interrupted: {'?' if ended is None else ended} of {trials} trials ended; continue with: {resume}",
              file=sys.stderr)
        return 130
    info["driver_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info["wall_seconds"] = time.perf_counter() - started
    files.write_json(sweep_file, info)
    from sweeper.report import write_report

    report = write_report(run_dir)
    print(summary_table(table, space))
    print(f"trials: {run_dir / 'trials.csv'}; per epoch: {run_dir / 'history.csv'}; "
          f"study: sqlite:///{(run_dir / 'study.db').resolve()}")
    print(f"report: {report}")
    return 0


def _started_with(saved: dict[str, Any]) -> dict[str, Any]:
    """What a sweep was started with (sweep.json's `started_with`; older sweeps: what their sweep.json says)."""
    try:
        legacy = {"data_root": saved["data"]["root"], "backbone": saved["backbone"]["name"],
                  "weights_digest": saved["backbone"]["weights_digest"], "trials": saved["options"]["trials"],
                  "seed": saved["options"]["seed"], "max_concurrent": saved["options"]["max_concurrent"],
                  "cache_dtype": saved["cache"]["dtype"]}
    except (KeyError, TypeError) as e:
        raise SweeperError(f"sweep.json: field {e} is missing; this folder cannot be resumed") from None
    return {**legacy, **(saved.get("started_with") or {})}


def _resume_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on a resume's command line that decide results: each must equal the sweep's."""
    from sweeper import files

    given: dict[str, Any] = {}
    if args.data is not None:
        given["data_root"] = str(Path(args.data).resolve())
    if args.backbone != "auto":
        given["backbone"] = args.backbone
    if args.space is not None:
        given["space"] = files.file_sha256(args.space)
    for field in ("trials", "seed", "max_concurrent", "label_mode"):
        if getattr(args, field) is not None:
            given[field] = getattr(args, field)
    if args.amp:
        given["amp"] = True
    if args.allow_unknown_ids:
        given["allow_unknown_ids"] = True
    if not isinstance(args.cache_dtype, _Default):
        given["cache_dtype"] = args.cache_dtype
    return given


def _load_sweep(run_dir: Path) -> dict[str, Any]:

    from sweeper.results import SWEEP_FILE

    path = Path(run_dir) / SWEEP_FILE
    if not path.is_file():
        raise SweeperError(f"{run_dir}: not a sweep folder (missing {SWEEP_FILE})")
    from sweeper.files import read_json

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
    from sweeper.space import load_space
    from sweeper.results import SPACE_COPY
    from sweeper.cluster import check_address
    from sweeper.confirm import run_confirm
    from sweeper.tune import SearchOptions

    if args.address:
        check_address(args.address)
    saved = _load_sweep(args.run)
    space = load_space(args.run / SPACE_COPY)
    inputs = _sweep_inputs(args.run, saved)
    inputs.quiet = args.quiet
    base = space.to_config(space.baseline_point())
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


def cmd_report(args: argparse.Namespace) -> int:
    from sweeper.report import write_report

    print(f"report: {write_report(args.run)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:

    from sweeper.evaluate import evaluate_run, summary_lines
    from sweeper.files import read_json

    data = args.data
    if data is None:  # the run's own data root: the synthetic default and `synth` sets carry a test/ split
        info = next((read_json(args.run / f) for f in ("sweep.json", "config.json")
                     if (args.run / f).is_file()), None)
        if info is None:
            raise SweeperError(f"{args.run}: not a run folder (no sweep.json or config.json); pass --data TEST_DIR")
        data = Path(info["data"]["root"])
    out = evaluate_run(args.run, data=data, trial=args.trial, out=args.out, device=args.device,
                       cache_root=args.cache_dir, show_progress=not args.quiet,
                       allow_unknown=args.allow_unknown_ids, comparisons=args.samples, epoch=args.epoch)
    for line in summary_lines(read_json(out / "test_metrics.json")):
        print(line)
    print(f"outputs in {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sweeper.export import export_head
    from sweeper.files import read_json
    from sweeper.results import CONFIG_FILE

    out = export_head(args.run, out=args.out, trial=args.trial, epoch=args.epoch)
    info = read_json(out / CONFIG_FILE)
    print(f"exported head {info['head']} ({info['parameters']:,} parameters; val IoU {info['val_iou']} at epoch "
          f"{info['val_epoch']}) to {out}")
    print(("the organisers' test script loads it as it is" if info["organisers_test_script"]
           else "build it with: " + info["build"]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m sweeper` and the `sweeper` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.quiet)
    try:
        return int(args.func(args) or 0)
    except SweeperError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
