"""The report's words and numbers: the banner, the headline, numbers as text, and summary.md.

index.html (`page.py`) and summary.md say the same things in the same words, so both take them from here;
`sweeper evaluate` formats its scores with the same `fmt`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd

from sweeper.report.load import BaselineRun, SweepRun, num
from sweeper.search.tables import describe_trial
from sweeper.training.config import PUBLISHED_BASELINE_IOU
from sweeper.training.objective import Objective, best_index, confirm_verdict

TOP_SUMMARY = 10  # trials in summary.md's table
PUBLISHED_LABEL = "published phase-1 figure on the real data"
SYNTHETIC_BANNER = ("SYNTHETIC data and an UNTRAINED random backbone: numbers show the machinery works, "
                    "they say nothing about the real task")


# --------------------------------------------------------------------------- numbers as text


def fmt(v: Any, digits: int = 4, *, missing: str = "—") -> str:
    """A number with `digits` decimals, or `missing` for None, NaN and non-numbers (the one number format)."""
    f = num(v)
    return missing if f is None else f"{f:.{digits}f}"


def delta(value: float | None, ref: float | None) -> str:
    """'+0.0123 (+4.1%)': absolute and relative difference, or '—'."""
    if value is None or ref is None:
        return "—"
    rel = f" ({(value - ref) / ref:+.1%})" if ref else ""
    return f"{value - ref:+.4f}{rel}"


def cell(v: Any, kind: str) -> tuple[str, str]:
    """(text shown, sort key) of a table cell; kind: 'int', 'num', 'sci', 'signed', 'bool' or 'text'."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or (kind not in ("text", "bool") and num(v) is None):
        return "—", ""
    if kind == "bool":
        return ("yes" if v else "no"), ("1" if v else "0")
    if kind == "text":
        return str(v), str(v)
    f = float(v)
    text = {"int": f"{f:.0f}", "sci": f"{f:.2e}", "signed": f"{f:+.4f}"}.get(kind, f"{f:.4f}")
    return text, repr(f)


# --------------------------------------------------------------------------- wording shared by page and summary


# what each reference metric is, beside the objective: phase 1's (0.2971's) and the dataset-level one
REFERENCE_METRICS = (("val_iou", "val IoU", "phase-1 per-batch"), ("val_miou", "val mIoU", "dataset-level"))


def reference_columns(objective: Objective) -> list[tuple[str, str, str]]:
    """(trials.csv column, words, kind) of the reference metrics other than the objective."""
    return [(f"best_{m}", label, kind) for m, label, kind in REFERENCE_METRICS if m != objective.metric]


def ranking_words(objective: Objective) -> str:
    """'best val IoU', or 'best val mIoU (lowest first)' for a metric ranked lowest first."""
    return f"best {objective.label}" + (" (lowest first)" if objective.ascending else "")


def trial_label(row: pd.Series) -> str:
    return f"trial {int(row.trial)}" + (" (baseline)" if row.get("baseline") else "")


def banner(synthetic: bool | None, trained: bool | None) -> str | None:
    """The warning a reader must see before any number, or None for real data and a trained backbone."""
    if synthetic and trained is False:
        return SYNTHETIC_BANNER
    if synthetic:
        return "SYNTHETIC data: numbers show the machinery works, they say nothing about the real task"
    if trained is False:
        return "UNTRAINED random backbone: numbers say nothing about what DINOv2 features can do"
    if synthetic is None:
        return "Data kind unknown (no run description): the numbers may come from synthetic data"
    return None


def synthetic_tag(synthetic: bool) -> str:
    """' [SYNTHETIC data]' after a title or a line of scores, when they come from synthetic data."""
    return " [SYNTHETIC data]" if synthetic else ""


def comparability(synthetic: bool | None, trained: bool | None) -> str:
    """What a difference from 0.2971 means here: '' when it compares like with like."""
    if synthetic or trained is False:
        what = " and ".join(w for w, on in (("data", synthetic), ("backbone", trained is False)) if on)
        return f"; not comparable: different {what}, shown for orientation only"
    if synthetic is None:
        return "; comparable only if this ran on the real data with a trained backbone (no run description)"
    return ""


# --------------------------------------------------------------------------- headlines


def sweep_headline(run: SweepRun) -> list[tuple[str, str]]:
    """(label, text) lines: best trial vs the sweep's baseline trial and vs the published figure, both metrics."""
    lines: list[tuple[str, str]] = []
    scored = run.scored()
    base, base_score = run.baseline, run.baseline_score
    obj = run.objective
    if scored.empty:
        return [("Best trial", "no trial has a score yet"), ("Trials", trial_counts(run))]
    best = scored.iloc[0]
    best_score = float(best[run.score])
    best_epoch = num(best.get("best_epoch"))
    at = f" at epoch {int(best_epoch)}" if best_epoch is not None else ""
    who = f"{trial_label(best)}: {describe_trial(best, run.dims)}"
    if base is not None and best.trial == base.trial:
        who += " — no sampled trial beat the baseline trial"
    # the objective first (what ranked them), then the reference metrics it is not
    own = dict((m, kind) for m, _, kind in REFERENCE_METRICS).get(obj.metric, f"ranked by it, {obj.mode}")
    refs = reference_columns(obj)
    lines.append(("Best trial", f"{who}; {obj.label} {best_score:.4f}{at} ({own}), "
                  + ", ".join(f"{label} {fmt(best.get(col))} ({kind})" for col, label, kind in refs)))
    short = lambda label: label.replace("val ", "")  # noqa: E731  'IoU', 'mIoU'
    if base_score is not None:
        scores = [(short(obj.label), best_score, base_score)] + [
            (short(label), num(best.get(col)), num(base.get(col))) for col, label, _ in refs]
        lines.append((f"vs this sweep's baseline trial {int(base.trial)} (phase-1 settings; "
                      + ", ".join(f"{w} {fmt(b)}" for w, _, b in scores) + ")",
                      "; ".join(f"{w} {delta(v, b)}" for w, v, b in scores)))
    else:
        lines.append(("vs this sweep's baseline trial", "— (no baseline trial with a score)"))
    published = (f"IoU {delta(num(best.get('best_val_iou')), PUBLISHED_BASELINE_IOU)} (phase 1 published no mIoU)"
                 + comparability(run.synthetic, run.backbone_trained))
    lines.append((f"vs the {PUBLISHED_LABEL} ({PUBLISHED_BASELINE_IOU})", published))
    lines.append(("Trials", trial_counts(run)))
    return lines


def trial_counts(run: SweepRun) -> str:
    """'12 of 20 planned: 9 finished (3 stopped early by ASHA), 1 failed, 2 unfinished'."""
    t = run.trials
    status = t.status if "status" in t else pd.Series([], dtype=str)
    done = int((status == "TERMINATED").sum())
    stopped = int((t.stopped_early & (status == "TERMINATED")).sum()) if "stopped_early" in t else 0
    failed = int((status == "ERROR").sum())
    other = len(t) - done - failed
    planned = f" of {run.planned_trials} planned" if run.planned_trials else ""
    text = f"{len(t)}{planned}: {done} finished ({stopped} stopped early by ASHA), {failed} failed"
    return text + (f", {other} unfinished" if other else "")


def baseline_headline(run: BaselineRun) -> list[tuple[str, str]]:
    """(label, text) lines: best val IoU vs the published figure, and mIoU."""
    if not run.history:
        return [("Best val IoU", "no epoch finished")]
    i = best_index([r.get("val_iou") for r in run.history])  # NaN-safe, the earliest on ties
    best = run.history[0 if i is None else i]
    iou = num(best.get("val_iou"))
    vs = delta(iou, PUBLISHED_BASELINE_IOU) + comparability(run.synthetic, run.backbone_trained)
    planned = (run.info.get("config") or {}).get("epochs", "?")
    return [("Best val IoU", f"{fmt(iou)} at epoch {best['epoch']} (phase-1 per-batch); "
                             f"val mIoU {fmt(best.get('val_miou'))} (dataset-level)"),
            (f"vs the {PUBLISHED_LABEL} ({PUBLISHED_BASELINE_IOU})", vs),
            ("Epochs", f"{len(run.history)} of {planned} run")]


def baseline_title(run: BaselineRun) -> str:
    return f"Baseline run report: {run.run_dir.resolve().name}"


def sweep_title(run: SweepRun) -> str:
    return f"Sweep report: {run.name}"


# --------------------------------------------------------------------------- tables shared by page and summary


def table_frame(run: SweepRun) -> pd.DataFrame:
    """The trials with deltas recomputed from the scores (the same numbers as the headline)."""
    t = run.ranked().copy()
    if t.empty:
        return t
    base = run.baseline_score
    t["delta_vs_baseline"] = t[run.score] - base if base is not None else math.nan
    iou = t["best_val_iou"] if "best_val_iou" in t else math.nan  # 0.2971 is phase 1's val IoU
    t["delta_vs_published"] = pd.to_numeric(iou, errors="coerce") - PUBLISHED_BASELINE_IOU
    return t


def confirm_rows(run: SweepRun) -> tuple[list[str], list[list[str]]]:
    """The confirm summary as table rows: each config's mean and spread over seeds, gain, verdict."""
    header = ["trial", "settings", "seeds", f"mean best {run.objective.label}", "std", "min", "max",
              "gain vs baseline", "verdict"]
    rows = []
    by_trial = {int(t.trial): t for _, t in run.trials.iterrows()} if "trial" in run.trials else {}
    bases = run.confirm["baseline"].astype(str).str.lower() == "true"
    base_seeds = int(run.confirm[bases]["seeds"].iloc[0]) if bases.any() else 0
    for (_, r), is_base in zip(run.confirm.iterrows(), bases):
        # from the numbers, not a stored verdict: a summary written before one seed meant "cannot tell" says so too
        verdict = confirm_verdict(baseline=bool(is_base), seeds=int(r.seeds), baseline_seeds=base_seeds,
                                  exceeds=str(r.get("gain_exceeds_spread")).lower() == "true",
                                  has_gain=num(r.get("gain_vs_baseline")) is not None)
        row = by_trial.get(int(r.trial))
        rows.append([f"{int(r.trial)}{' (phase 1)' if is_base else ''}",
                     "—" if row is None else describe_trial(row, run.dims), str(int(r.seeds)), fmt(r["mean"]),
                     fmt(r["std"]), fmt(r["min"]), fmt(r["max"]), cell(r["gain_vs_baseline"], "signed")[0],
                     verdict])
    return header, rows


# --------------------------------------------------------------------------- summary.md

_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>#|~!&{}"} | {"\n": " ", "\r": " "})


def md_text(text: object) -> str:
    """Text as literal Markdown on one line: run names, paths and error messages render as written, never
    as markup or HTML (index.html escapes the same strings with html.escape)."""
    return str(text).translate(_MD_SPECIAL)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_text(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _md(title: str, warning: str | None, headline: Sequence[tuple[str, str]], missing: Sequence[str]) -> list[str]:
    """The top both kinds of summary.md share: title, banner, headline, what is missing."""
    out = [f"# {md_text(title)}", ""]
    if warning:
        out += [f"> **{md_text(warning)}**", ""]
    out += ["## Headline", ""] + [f"- **{md_text(k)}**: {md_text(v)}" for k, v in headline] + [""]
    if missing:
        out += ["## Missing or unfinished", ""] + [f"- {md_text(m)}" for m in missing] + [""]
    return out


def sweep_summary_md(run: SweepRun, top: int = TOP_SUMMARY) -> str:
    """summary.md: the headline and the top trials as a Markdown table."""
    out = _md(sweep_title(run), banner(run.synthetic, run.backbone_trained), sweep_headline(run), run.missing)
    t = table_frame(run)
    t = t[t[run.score].notna()].head(top) if not t.empty else t
    out += [f"## Top {top} trials by {ranking_words(run.objective)}", ""]
    if t.empty:
        out += ["No trial has a score yet.", ""]
    else:
        refs = reference_columns(run.objective)
        header = ["rank", "trial", "status", "settings", "epochs run", f"best {run.objective.label}",
                  *(f"best {label}" for _, label, _ in refs), "Δ vs baseline trial", "Δ vs 0.2971"]
        rows = [[str(i), trial_label(r), str(r.get("status", "")), describe_trial(r, run.dims),
                 cell(r.get("epochs_run"), "int")[0], fmt(r[run.score]), *(fmt(r.get(col)) for col, _, _ in refs),
                 cell(r.get("delta_vs_baseline"), "signed")[0],
                 cell(r.get("delta_vs_published"), "signed")[0]] for i, (_, r) in enumerate(t.iterrows(), 1)]
        out += [_md_table(header, rows), ""]
    if run.confirm is not None and not run.confirm.empty:
        out += ["## Is the winner real? (sweeper confirm)", "", _md_table(*confirm_rows(run)), ""]
    failed = run.failed()
    if len(failed):
        out += ["## Failed trials", ""]
        out += [f"- trial {int(r.trial)}: {md_text(r.get('error'))}" for _, r in failed.iterrows()]
        out.append("")
    return "\n".join(out)


def baseline_summary_md(run: BaselineRun) -> str:
    """summary.md of a baseline run: the headline and what is missing."""
    return "\n".join(_md(baseline_title(run), banner(run.synthetic, run.backbone_trained), baseline_headline(run),
                         run.missing))
