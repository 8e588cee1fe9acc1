"""Figures of the benchmarks under scripts/bench/, drawn from the results file a benchmark wrote (never by running it).

`plot_search_efficiency` draws results/bench/search_efficiency.json (scripts/bench/search_efficiency.py): the best
val IoU each search method has found against the trial-epochs spent, and each sweep's winner once confirmed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sweeper.report.figures import NoData, new_figure, outside_legend, reference_line, styled


@styled
def plot_search_efficiency(result: dict[str, Any]) -> Figure:
    """Left: each method's anytime curve (median over sweep seeds, the band from the 25th to the 75th percentile of
    the seeds' curves; min and max are in the results file). Right: each
    sweep's winner as it scored in its sweep (hollow) and retrained over the confirm seeds (filled, with its
    seed-to-seed std), the phase-1 config's confirmed mean as the reference."""
    methods = result.get("methods") or {}
    if not methods:
        raise NoData("no methods in the results file")
    fig, (left, right) = new_figure(2, width=6.5, height=4.6)
    # the house palette without purple (the phase-1 reference's) and grey
    colours = {name: f"C{i}" for i, name in zip((0, 1, 2, 3, 5, 6, 8, 9), methods)}
    for name, m in methods.items():
        curves = _curves(m["runs"])
        x = np.arange(1, curves.shape[1] + 1)
        left.plot(x, np.nanmedian(curves, axis=0), color=colours[name], linewidth=2, drawstyle="steps-post",
                  label=f"{m['label']} (median of {len(curves)})")
        lo, hi = np.nanpercentile(curves, [25, 75], axis=0)  # of 5 seeds: the 2nd and 4th
        left.fill_between(x, lo, hi, color=colours[name], alpha=0.15, linewidth=0, step="post")
    left.set_xlabel("Trial-epochs spent")
    left.set_ylabel(f"Best {result.get('metric', 'val_iou')} found so far")
    left.set_title(f"Best found per trial-epoch (median; band: 25-75 % of sweep seeds)\n{_data_words(result)}",
                   fontsize="small")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.27), fontsize="small", ncol=1)  # below: never on a curve
    for i, (name, m) in enumerate(methods.items()):
        runs = [r for r in m["runs"] if r.get("winner_sweep_score") is not None]
        jitter = np.linspace(-0.15, 0.15, len(runs)) if len(runs) > 1 else np.zeros(len(runs))
        right.scatter(i + jitter, [r["winner_sweep_score"] for r in runs], facecolors="none",
                      edgecolors=colours[name], s=36, label="in its sweep" if i == 0 else None, zorder=3)
        done = [(j, r["confirmed"]) for j, r in zip(jitter, runs) if r.get("confirmed")]
        if done:
            right.errorbar([i + j for j, _ in done], [c["mean"] for _, c in done],
                           yerr=[c["std"] or 0.0 for _, c in done], fmt="o", color=colours[name], markersize=6,
                           capsize=3, label=f"confirmed ({result.get('confirm_seeds', '?')} seeds, ±std)"
                           if i == 0 else None, zorder=4)
            right.hlines(float(np.mean([c["mean"] for _, c in done])), i - 0.3, i + 0.3, colors="0.2", linewidth=1.5,
                         label="mean of the confirmed" if i == 0 else None, zorder=5)
    base = (result.get("confirm") or {}).get("phase1_config") or {}
    if base.get("mean") is not None:
        reference_line(right, base["mean"], kind="baseline", label=f"phase-1 config, confirmed ({base['mean']:.3f})")
    right.set_xticks(range(len(methods)), list(methods), rotation=20)
    right.set_xlim(-0.5, len(methods) - 0.5)
    right.set_ylabel(f"Winner's {result.get('metric', 'val_iou')}")
    right.set_title(f"Each sweep's winner within {result.get('budget_trial_epochs', '?')} trial-epochs:\n"
                    f"its score in the sweep, and retrained", fontsize="small")
    outside_legend(right)
    return fig


def _data_words(result: dict[str, Any]) -> str:
    data, backbone = result.get("data") or {}, result.get("backbone") or {}
    kind = "synthetic" if data.get("synthetic") else "real"
    trained = "trained" if backbone.get("trained") else "untrained"
    space = Path(str(result.get("space", "?"))).stem  # phase2-196x112: a copy of phase2 at that image size
    return (f"{data.get('train_images', '?')} train / {data.get('val_images', '?')} val {kind} images, "
            f"{trained} {backbone.get('name', '?')},\nspace {space}")


def _curves(runs: list[dict[str, Any]]) -> np.ndarray:
    """The sweeps' anytime curves as one array (seed x trial-epoch), a shorter curve padded with NaN."""
    length = max(len(r["curve"]) for r in runs)
    return np.array([[np.nan if v is None else v for v in r["curve"]] + [np.nan] * (length - len(r["curve"]))
                     for r in runs], dtype=float)
