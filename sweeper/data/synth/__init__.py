"""Synthetic desert scenes in the dataset's exact layout: the stand-in where the real data cannot be shipped.

Offers: `generate` (write a dataset), `scene` (draw one scene), `places` (what the two places look like, as data).
"""
