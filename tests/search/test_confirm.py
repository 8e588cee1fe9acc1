"""`sweeper confirm`'s verdict on known numbers: a gain is real only beyond the seed-to-seed spread, and with
fewer than two seeds there is no spread to judge by, so the answer is "cannot tell"."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from test_report import make_sweep

from sweeper.report import write_report
from sweeper.search.confirm import summarise_confirm


def one_seed_runs() -> pd.DataFrame:
    return pd.DataFrame({"trial": [0, 3], "best_val_iou": [0.20, 0.30]})


def test_one_seed_cannot_tell_whether_a_gain_is_real():
    s = summarise_confirm(one_seed_runs(), baseline_trial=0).set_index("trial")
    assert s.loc[3, "gain_vs_baseline"] == pytest.approx(0.10)
    assert math.isnan(s.loc[3, "std"]) and math.isnan(s.loc[0, "std"])  # one value has no spread, not a spread of 0
    assert pd.isna(s.loc[3, "gain_exceeds_spread"]) and pd.isna(s.loc[0, "gain_exceeds_spread"])
    assert s.loc[3, "verdict"] == "cannot tell: fewer than 2 seeds" and s.loc[0, "verdict"] == "reference"


def test_a_config_with_one_seed_beside_a_baseline_with_three_cannot_tell_either():
    # the baseline has a spread, trial 3 does not (its other seeds failed): its own noise is unknown
    runs = pd.DataFrame({"trial": [0, 0, 0, 3], "best_val_iou": [0.20, 0.21, 0.19, 0.40]})
    s = summarise_confirm(runs, baseline_trial=0).set_index("trial")
    assert pd.isna(s.loc[3, "gain_exceeds_spread"]) and s.loc[3, "verdict"] == "cannot tell: fewer than 2 seeds"


def test_two_or_more_seeds_still_judge_by_the_spread():
    runs = pd.DataFrame({"trial": [0, 0, 0, 5, 5, 5, 7, 7, 7],
                         "best_val_iou": [0.30, 0.31, 0.29, 0.40, 0.41, 0.39, 0.31, 0.33, 0.29]})
    s = summarise_confirm(runs, baseline_trial=0).set_index("trial")
    assert s.loc[5, "gain_exceeds_spread"] is True and s.loc[5, "verdict"] == "real: gain > 2x seed spread"
    assert s.loc[7, "gain_exceeds_spread"] is False and s.loc[7, "verdict"] == "within seed noise"


def test_the_report_says_cannot_tell_for_one_seed(tmp_path):
    run = make_sweep(tmp_path / "run", study_trials=0)
    summarise_confirm(one_seed_runs(), baseline_trial=0).to_csv(run / "confirm_summary.csv", index=False)
    page = write_report(run).read_text()
    assert "cannot tell: fewer than 2 seeds" in page and "real: gain" not in page and "within seed noise" not in page
    md = (run / "report" / "summary.md").read_text()
    (row,) = [line for line in md.splitlines() if line.startswith("| 3 ") and "seed" in line]  # confirm's table
    assert "| 1 | 0.3000 | — |" in row and row.endswith("| cannot tell: fewer than 2 seeds |")  # std: none


def test_a_summary_written_before_the_verdict_column_still_reads_one_seed_as_cannot_tell(tmp_path):
    # confirm_summary.csv of today's main: gain_exceeds_spread True beside a std of 0 from one seed
    run = make_sweep(tmp_path / "run", study_trials=0)
    pd.DataFrame({"trial": [0, 3], "seeds": [1, 1], "mean": [0.2, 0.3], "std": [0.0, 0.0], "min": [0.2, 0.3],
                  "max": [0.2, 0.3], "baseline": [True, False], "gain_vs_baseline": [0.0, 0.1], "noise": [0.0, 0.0],
                  "gain_exceeds_spread": [False, True]}).to_csv(run / "confirm_summary.csv", index=False)
    page = write_report(run).read_text()
    assert "cannot tell: fewer than 2 seeds" in page and "real: gain" not in page
