"""Run folders: every file name a run writes, one owner at a time, each trial's records, the one resume decision,
and the heads a run saved. Used by search, report, evaluate and export; never by training.

Offers: `layout` (file names), `lock` (run_lock), `records` (trial records), `resume`, `heads`, `phase1_text`.
"""
