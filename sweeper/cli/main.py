"""Command line: `python -m sweeper COMMAND`, one sub-command per job (`sweeper -h` lists them).

The CLI is the only place that prints. Input errors (`SweeperError`) become
one line on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from sweeper.cli.cache import add_parser as add_cache_parser
from sweeper.cli.evaluate import cmd_evaluate
from sweeper.cli.inputs import Default, describe_inputs, in_run_folder, prepare
from sweeper.cli.plan import cmd_plan
from sweeper.cli.search import cmd_confirm, cmd_search
from sweeper.errors import SweeperError
from sweeper.training.config import PUBLISHED_BASELINE_IOU

log = logging.getLogger("sweeper")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line, like every other input error: the option, what it allows and
    where to read more (`sweeper search -h`), exit code 2; no usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {option_message(message)}; see {self.prog} -h\n")

    def add_subparsers(self, **kwargs):  # kept, so that main() can ask a command's own parser to refuse
        self.commands = super().add_subparsers(**kwargs)
        return self.commands


def option_message(message: str) -> str:
    """argparse's error text as 'OPTION: what is wrong': '--trials: expected a whole number >= 1, got 0'."""
    m = re.fullmatch(r"the following arguments are required: (.*)", message)
    if m:
        return f"{m.group(1)}: required"
    m = re.fullmatch(r"argument ([^:]+): (.*)", message, re.S)
    if not m:
        return message
    name, what = m.group(1).split("/")[-1], m.group(2)
    choice = re.fullmatch(r"invalid choice: (.*) \(choose from (.*)\)", what)
    kind = re.fullmatch(r"invalid (int|float) value: (.*)", what)
    if choice:
        what = f"expected one of {choice.group(2).replace(chr(39), '')}, got {choice.group(1)}"
    elif kind:
        what = f"expected {'a whole number' if kind.group(1) == 'int' else 'a number'}, got {kind.group(2)}"
    return f"{name}: {what}"


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
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {v}")
    return v


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
    g.add_argument("--cache-dtype", choices=["float32", "float16"], default=Default(cache_dtype),
                   help=f"storage type of cached tokens (float16 halves disk and memory; default {cache_dtype})")
    g.add_argument("--allow-unknown-ids", action="store_true",
                   help="map unknown raw mask ids to class 0 as phase 1 does, instead of failing")
    if cache_switch:
        g.add_argument("--no-cache", action="store_true",
                       help="run the backbone inside the training loop like phase 1 (slow; same numbers)")


def add_gpu_memory_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu-memory", type=_positive_float, metavar="GiB",
                   help="GiB of the GPU sweeper may use (a smaller card's size, or your part of a shared GPU): "
                        "trial shares divide this, each process capped at its part (default: the whole card)")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one sub-command per job."""
    from sweeper import __version__
    from sweeper.search.space import shipped_spaces

    spaces = ", ".join(shipped_spaces())  # what exists, so the help cannot fall behind
    parser = _Parser(prog="sweeper")
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
    p.add_argument("--workers", type=_positive_int, help="processes writing scenes (default: every available core; "
                                                         "the files are the same for any number)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("baseline", help="reproduce the phase-1 run (SGD 1e-4, 10 epochs, batch 2, unweighted CE)")
    add_data_options(p, cache_switch=True)
    p.add_argument("--out", type=Path, help="output folder (default: results/baseline-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (else refused)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="epochs (default: phase 1's 10)")
    p.add_argument("--seed", type=int, default=0, help="head initialisation and shuffling seed")
    add_gpu_memory_option(p)
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("search", help="phase 2: Ray Tune trials, Optuna TPE proposals, ASHA early stopping")
    add_data_options(p, cache_dtype="float16")  # same trial scores, half the memory: docs/cache.md
    p.add_argument("--space", type=Path, help=f"search space YAML, or the name of a shipped one: {spaces} "
                                              f"(default: phase2)")
    p.add_argument("--trials", type=_positive_int, help="total trials incl. the baseline trial 0 (default: the space's)")
    p.add_argument("--name", help="run name: results go to OUT/NAME (default: sweep-<time>)")
    p.add_argument("--out", type=Path, default=Path("results"), help="results root (default: results)")
    p.add_argument("--gpus-per-trial", type=float, help="GPU share per trial (default: 0.25 with a GPU, else 0)")
    p.add_argument("--cpus-per-trial", type=_positive_float, help="CPUs per trial, also its torch threads (default 1; "
                                                                  "a resume: as recorded)")
    p.add_argument("--max-concurrent", type=_positive_int, help="trials at once (default: the space's on CPU, "
                                                                   "1/gpus-per-trial per GPU; a resume: as recorded)")
    p.add_argument("--address", help="join a running Ray cluster (e.g. HEAD_IP:6379) instead of starting one")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard with a local cluster")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep OUT/NAME (needs --name)")
    p.add_argument("--seed", type=int, help="TPE sampler seed (default 0)")
    p.add_argument("--amp", action="store_true", help="mixed precision for the head on CUDA (no effect on CPU)")
    add_gpu_memory_option(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("confirm", help="re-train the top configs and the baseline with several seeds: is the gain real?")
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="a sweep folder (results/NAME)")
    p.add_argument("--top", type=_positive_int, default=3, help="how many of the best trials (default 3)")
    p.add_argument("--seeds", type=_positive_int, default=3, help="seeds per config (default 3)")
    p.add_argument("--max-concurrent", type=_positive_int, help="trials at once (default: as the sweep)")
    p.add_argument("--address", help="join a running Ray cluster instead of starting one")
    p.add_argument("--device", default="auto", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_confirm)

    p = sub.add_parser("plan", help="what a search will cost on this machine (time, memory, disk), before it runs")
    add_data_options(p, cache_dtype="float16")  # the search's defaults
    p.add_argument("--space", type=Path, help=f"search space YAML, or a shipped one's name: {spaces} (default: phase2)")
    p.add_argument("--trials", type=_positive_int, help="total trials (default: the space's)")
    p.add_argument("--gpus-per-trial", type=float, help="GPU share per trial (default: as search)")
    p.add_argument("--cpus-per-trial", type=_positive_float, default=1.0, help="CPUs per trial (default 1)")
    p.add_argument("--max-concurrent", type=_positive_int, help="trials at once (default: as search)")
    p.add_argument("--out", type=Path, default=Path("results"), help="writes OUT/plan.json (default: results)")
    add_gpu_memory_option(p)
    p.set_defaults(func=cmd_plan)

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

    add_cache_parser(sub)
    parser.description = f"Command line: `python -m sweeper {{{','.join(sub.choices)}}}`."  # every command added
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (tests and notebooks swap it, and close the old one)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns one; always follow sys.stderr instead
        pass


class _RayNoise(logging.Filter):
    """Drops Ray messages a search would print: a failed trial's full traceback (our progress line names the
    error; the traceback is in the trial's error.txt in the run folder), the notice that a local Ray uses token
    authentication (it does, and stays so: only the notice goes), and on Ctrl-C or SIGTERM Ray Tune's own
    stop notice and `Tuner.restore(...)` advice (the command prints `sweeper search --resume ...` instead)."""

    DROPPED = {
        "ray.tune.execution.tune_controller": ("Trial task failed for trial ",),
        "ray._private.authentication.authentication_token_setup": ("Token authentication is enabled for this Ray",),
        "ray.tune.tune": ("Stop signal received", "Experiment has been interrupted"),
    }

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.DROPPED.get(record.name, ()) or "\0")


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


def cmd_synth(args: argparse.Namespace) -> int:
    from sweeper.bar import progress_bar
    from sweeper.data.synth import generate as synth

    total = args.train + args.val + args.test
    with progress_bar(total=total, desc="writing synthetic scenes", enabled=not args.quiet) as bar:
        out = synth.generate(args.out, train=args.train, val=args.val, test=args.test, seed=args.seed,
                             size=args.size, progress=lambda done, _total: bar.update(done - bar.n),
                             workers=args.workers)
    print(f"wrote {args.train} train, {args.val} val, {args.test} test synthetic scenes to {out}")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from sweeper.training.config import TrainConfig

    overrides: dict[str, Any] = {"device": args.device, "seed": args.seed}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.label_mode is not None:
        overrides["label_mode"] = args.label_mode
    if args.gpu_memory:
        overrides["gpu_memory_gib"] = args.gpu_memory
    config = TrainConfig().replace(**overrides)
    out = args.out or Path("results") / time.strftime("baseline-%Y%m%d-%H%M%S")
    return in_run_folder(out, f"sweeper baseline --out {out}", lambda: _baseline_in(args, config, out))


def _baseline_in(args: argparse.Namespace, config, out: Path) -> int:
    """cmd_baseline's work, with `out` owned by this process."""
    from sweeper import files
    from sweeper.report import write_report
    from sweeper.report.run_figures import phase1_plots
    from sweeper.rundir import heads, layout, records
    from sweeper.rundir.phase1_text import evaluation_metrics_text
    from sweeper.training.train import train

    kept = [f for f in (layout.CONFIG_FILE, layout.METRICS_FILE, layout.HEAD_FILE) if (out / f).exists()]
    if kept and not args.overwrite:
        raise SweeperError(f"{out}: holds a run already ({', '.join(kept)}); pass --overwrite to replace it, "
                           f"or choose another --out")
    p = prepare(args, height=config.image_height, width=config.image_width, label_mode=config.label_mode,
                use_cache=not args.no_cache)
    data_src, backbone, data = p.source, p.backbone, p.data
    files.write_json(out / layout.CONFIG_FILE, {
        "command": "baseline", "config": config.to_dict(), **describe_inputs(p, args),
        "feature_cache_used": not args.no_cache, "versions": records.versions(),
    })
    print(f"phase-1 baseline: {len(data.train.labels)} train / {len(data.val.labels)} val images"
          f"{' (SYNTHETIC data)' if data_src.synthetic else ''}, backbone {backbone.name}, "
          f"{config.epochs} epochs -> {out}", file=sys.stderr)

    def on_epoch(record: dict, head) -> None:
        files.append_jsonl(out / layout.METRICS_FILE, record)
        train_iou = record.get("train_iou")
        print(f"epoch {record['epoch']:>3}/{config.epochs}  train loss {record['train_loss']:.4f}  "
              f"val loss {record['val_loss']:.4f}  "
              + (f"train IoU {train_iou:.4f}  " if train_iou is not None else "")
              + f"val IoU {record['val_iou']:.4f}  val mIoU {record['val_miou']:.4f}  "
              f"({record['epoch_seconds']:.1f} s)", file=sys.stderr, flush=True)

    (out / layout.METRICS_FILE).unlink(missing_ok=True)  # a rerun into the same folder starts a fresh log
    if config.threads:  # this process's torch threads: set here, `train` changes no global state
        import torch
        torch.set_num_threads(config.threads)
    result = train(config, data, on_epoch=on_epoch)
    heads.save_head(out / layout.HEAD_FILE, result.head_state)
    files.write_text_atomic(out / layout.TEXT_FILE, evaluation_metrics_text(result.history))
    phase1_plots(out)
    report = write_report(out)
    best = result.best
    ref = "published phase-1 figure on the real data" if data_src.synthetic else "phase 1"
    print(f"best val IoU {best['val_iou']:.4f} at epoch {best['epoch']} "
          f"({ref}: {PUBLISHED_BASELINE_IOU}); val mIoU {best['val_miou']:.4f}; "
          f"{result.seconds:.0f} s; outputs in {out}; report {report}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sweeper.report import write_report

    print(f"report: {write_report(args.run)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sweeper.export import export_head
    from sweeper.files import read_json
    from sweeper.rundir.layout import CONFIG_FILE

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
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the command's own parser, so the hint is `sweeper search -h`, not `sweeper -h`
        parser.commands.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    _configure_logging(args.quiet)
    try:
        return int(args.func(args) or 0)
    except SweeperError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
