"""Phase-2 search: Ray Tune runs trials of the shared trainer, Optuna proposes, ASHA stops early; its plan and its
confirmation. Space validation is hand-written on purpose (cross-field rules, one-line errors): see `space`.

Offers: `space`, `options` (SearchOptions), `driver` (run_search), `trial`, `tables`, `confirm`, `progress`,
`ray_local` (Ray started or joined), `reaper`, `relocate`, `study_db` (study.db, readable while the sweep writes),
`plan`, `plan_epochs` and `plan_measure` (`sweeper plan`).
"""
