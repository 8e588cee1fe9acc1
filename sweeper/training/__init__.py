"""Training one head: the typed config, the one `train` function that baseline, trials and tests share, and what
it needs (device, optimiser, losses, metrics, which epoch is best).

Offers: `config` (TrainConfig), `train`, `device`, `optim`, `losses`, `metrics`, `objective` (metric, mode, best_index).
"""
