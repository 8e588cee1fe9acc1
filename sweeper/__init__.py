"""sweeper: a Ray Tune + Optuna hyperparameter sweeper for a frozen-DINOv2 segmentation head.

The package is laid out as the pipeline it runs:
data -> backbone -> features (cache) -> head -> train (+ metrics) -> tune (search) -> report.
"""

__version__ = "0.1.0"
