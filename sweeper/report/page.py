"""index.html: one self-contained page (figures embedded as PNG, no network), its CSS, and the trials table
that sorts by any column with a few lines of JavaScript.

The words and numbers come from `summary.py`, so the page and summary.md always agree.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any, Sequence

from sweeper.report.figures import FigureSpec
from sweeper.report.load import BaselineRun, SweepRun
from sweeper.report.summary import (banner, baseline_headline, baseline_title, cell, confirm_rows, sweep_headline,
                                    sweep_title, table_frame)
from sweeper.search.tables import describe_trial

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1300px;padding:1rem 2rem;
color:#222;line-height:1.45}
h1{margin-bottom:.2rem}.meta{color:#555;margin-top:0}
.banner{background:#b00020;color:#fff;font-weight:700;font-size:1.15rem;padding:.9rem 1.2rem;border-radius:6px;
margin:1rem 0}
.headline{border-collapse:collapse;margin:.5rem 0 1rem}.headline th{text-align:left;padding:.3rem 1rem .3rem 0;
vertical-align:top;color:#444;font-weight:600}.headline td{padding:.3rem 0}
.missing{background:#fff4e5;border-left:5px solid #f0a020;padding:.5rem 1rem}
.failed{background:#fdecea;border-left:5px solid #d33;padding:.5rem 1rem}
figure{margin:1.5rem 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{color:#555;font-size:.92rem}
table.trials{border-collapse:collapse;font-size:.85rem;width:100%}
table.trials th,table.trials td{border-bottom:1px solid #ddd;padding:.25rem .45rem;text-align:right;white-space:nowrap}
table.trials th{background:#f2f2f2;cursor:pointer;position:sticky;top:0;user-select:none}
table.trials th:hover{background:#e2e2e2}table.trials th[data-dir=asc]::after{content:" \\25B2"}
table.trials th[data-dir=desc]::after{content:" \\25BC"}
table.trials td.text{text-align:left;white-space:normal}tr.baseline{background:#f0ecfa}tr.best{background:#e7f6ea}
tr.error{background:#fdecea}.scroll{overflow-x:auto;max-height:80vh}
dl.metrics dt{font-weight:600}dl.metrics dd{margin:0 0 .5rem 1rem}
"""

# Click a header to sort by it (again to reverse); empty cells always sort last.
SORT_JS = """
document.querySelectorAll("table.trials th").forEach((th, i) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], asc = th.dataset.dir !== "asc";
  th.parentNode.querySelectorAll("th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = asc ? "asc" : "desc";
  const val = r => r.cells[i].dataset.v;
  [...body.rows].sort((a, b) => {
    const x = val(a), y = val(b);
    if (x === "" || y === "") return (x === "") - (y === "");
    const nx = Number(x), ny = Number(y);
    const c = !isNaN(nx) && !isNaN(ny) ? nx - ny : x.localeCompare(y);
    return asc ? c : -c;
  }).forEach(r => body.appendChild(r));
}));
"""

METRICS_NOTE = (
    ("Val IoU (phase-1 per-batch)", "phase 1's metric: IoU scored on each validation batch of 2 images and "
     "averaged over batches. The published 0.2971 is this number; it depends on batch composition."),
    ("Val mIoU (dataset-level)", "the usual mIoU: per-class IoU from one confusion matrix over the whole "
     "validation split, averaged over classes present. Phase 1 did not report it."),
)

PHASE3_COLUMNS = ("head", "train_labels", "flip_prob")  # shown only when a sweep varies them
# (trials.csv column, header, kind): kind 'text' is left-aligned and sorted as text.
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("trial", "trial", "int"), ("status", "status", "text"), ("head", "head", "text"),
    ("train_labels", "train labels", "text"), ("flip_prob", "flip p", "num"), ("optimizer", "optimiser", "text"),
    ("lr", "lr", "sci"), ("momentum", "momentum", "num"), ("weight_decay", "weight decay", "sci"),
    ("schedule", "schedule", "text"), ("warmup_epochs", "warm-up ep.", "num"),
    ("class_weights", "class weights", "text"), ("class_weight_power", "cw power", "num"),
    ("class_weight_max", "cw max", "num"), ("batch_size", "batch", "int"), ("epochs_planned", "ep. planned", "int"),
    ("epochs_run", "ep. run", "int"), ("stopped_early", "stopped early", "bool"), ("incomplete", "record incomplete", "bool"),
    ("best_val_iou", "best val IoU", "num"), ("best_epoch", "best ep.", "int"), ("best_val_miou", "best val mIoU", "num"),
    ("delta_vs_baseline", "Δ vs baseline", "signed"), ("delta_vs_published", "Δ vs 0.2971", "signed"),
    ("wall_seconds", "wall s", "int"), ("error", "error", "text"),
)


def trials_table_html(run: SweepRun) -> str:
    """The sortable trials table: one <tr> per trial in <tbody>, best first."""
    t = table_frame(run)
    if t.empty:
        return "<p>No trials yet.</p>"
    # phase 3's columns only where they vary: a phase-2 sweep's are phase 1's head, labels and no flips
    columns = list(TABLE_COLUMNS)
    if run.score not in (c for c, _, _ in columns):  # an objective other than the two reference metrics
        columns.insert(next(i for i, (c, _, _) in enumerate(columns) if c == "best_epoch"),
                       (run.score, f"best {run.objective.label}", "num"))
    cols = [(c, h, k) for c, h, k in columns
            if c in t.columns and not (c in PHASE3_COLUMNS and t[c].nunique(dropna=False) <= 1)
            and not (c == "incomplete" and not t[c].any())]  # shown only where a record is torn
    best = run.scored().trial.iloc[0] if len(run.scored()) else None
    head = "".join(f'<th title="click to sort">{html.escape(h)}</th>' for _, h, _ in cols)
    rows = []
    for _, r in t.iterrows():
        cls = " ".join(c for c, on in (("baseline", r.get("baseline")), ("best", r.trial == best),
                                       ("error", r.get("status") == "ERROR")) if on)
        cells = []
        for c, _, k in cols:
            text, key = cell(r.get(c), k)
            if c == "trial" and r.get("baseline"):
                text += " (baseline)"
            align = ' class="text"' if k == "text" else ""
            cells.append(f'<td data-v="{html.escape(key)}"{align}>{html.escape(text)}</td>')
        attrs = f' class="{cls}"' if cls else ""
        rows.append(f'<tr{attrs} data-trial="{int(r.trial)}">' + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="trials" id="trials"><thead><tr>{head}</tr></thead>'
            f"<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>")


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _page(title: str, meta: str, warning: str | None, headline: Sequence[tuple[str, str]], missing: Sequence[str],
          figures: Sequence[tuple[FigureSpec, Path]], extra: str = "") -> str:
    """The one page layout both report kinds share."""
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f'<p class="meta">{meta}</p>']
    if warning:
        parts.append(f'<div class="banner" id="banner" role="alert">{html.escape(warning)}</div>')
    parts.append('<section id="headline"><h2>Headline</h2><table class="headline">')
    parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in headline]
    parts.append("</table>")
    parts.append('<dl class="metrics">' + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                                                  for k, v in METRICS_NOTE) + "</dl></section>")
    if missing:
        parts.append('<section id="missing" class="missing"><h2>Missing or unfinished</h2><ul>'
                     + "".join(f"<li>{html.escape(m)}</li>" for m in missing) + "</ul></section>")
    parts.append(extra)
    parts.append('<section id="figures"><h2>Figures</h2>')
    for spec, path in figures:
        parts.append(f'<figure id="{path.stem}"><h3>{html.escape(spec.heading)}</h3>{_img_tag(path, spec.heading)}'
                     f"<figcaption>{html.escape(spec.caption)} <code>{path.name}</code></figcaption></figure>")
    parts.append("</section>")
    return "\n".join(parts)


def _meta_line(run_dir: Path, info: dict[str, Any]) -> str:
    data, bb = info.get("data") or {}, info.get("backbone") or {}
    bits = [f"Run folder <code>{html.escape(str(run_dir.resolve()))}</code>"]
    if data:
        kind = "synthetic" if data.get("synthetic") else "real"
        bits.append(f"data: {kind}, {data.get('train_images', '?')} train / {data.get('val_images', '?')} val images "
                    f"(<code>{html.escape(str(data.get('root', '?')))}</code>)")
    if bb:
        bits.append(f"backbone: {html.escape(str(bb.get('description') or bb.get('name')))}")
    bits.append(f"report written {time.strftime('%Y-%m-%d %H:%M')} from saved results only")
    return "; ".join(bits)


def sweep_html(run: SweepRun, figures: Sequence[tuple[FigureSpec, Path]]) -> str:
    """The sweep's index.html: headline, missing parts, failed trials, figures, sortable table."""
    failed = run.failed()
    extra = ""
    if len(failed):
        extra = ('<section id="failed" class="failed"><h2>Failed trials</h2><ul>'
                 + "".join(f"<li>trial {int(r.trial)} ({html.escape(describe_trial(r, run.dims))}): "
                           f"<code>{html.escape(str(r.get('error') or 'no error text saved'))}</code></li>"
                           for _, r in failed.iterrows()) + "</ul></section>")
    if run.notes:
        extra += "<p>" + " ".join(html.escape(n) for n in run.notes) + "</p>"
    extra += confirm_html(run)
    body = _page(sweep_title(run), _meta_line(run.run_dir, run.info),
                 banner(run.synthetic, run.backbone_trained), sweep_headline(run), run.missing, figures, extra)
    return (body + '\n<section id="table"><h2>All trials</h2><p>Click a column header to sort.</p>'
            + trials_table_html(run) + f"</section>\n<script>{SORT_JS}</script>\n</body></html>\n")


def confirm_html(run: SweepRun) -> str:
    """The 'is the winner real?' section, when `sweeper confirm` has been run."""
    if run.confirm is None or run.confirm.empty:
        return ""
    header, rows = confirm_rows(run)
    return ('<section id="confirm"><h2>Is the winner real? (sweeper confirm)</h2><p>Each config re-trained with '
            'several seeds; a gain counts as real when it exceeds twice the larger seed-to-seed standard '
            'deviation; with fewer than 2 seeds there is no spread, so it cannot tell.</p>'
            '<table class="confirm"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in header)
            + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                                             for r in rows) + "</tbody></table></section>")


def baseline_html(run: BaselineRun, figures: Sequence[tuple[FigureSpec, Path]]) -> str:
    """A baseline run's index.html: headline, missing parts, figures."""
    page = _page(baseline_title(run), _meta_line(run.run_dir, run.info), banner(run.synthetic, run.backbone_trained),
                 baseline_headline(run), run.missing, figures)
    return page + "\n</body></html>\n"
