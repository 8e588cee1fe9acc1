"""The data: the Duality offroad dataset on disk, the synthetic stand-in, and the frozen backbone's tokens cached
on disk, memory-mapped; what the head trains on.

Offers: `classes` (the class table and names, LabelMode: no torch), `dataset` (folders, images, labels), `synth`
(generated scenes), `cache` (the feature cache) and `cache_folder` (its files), `tokens` (TrainData), `parallel`
(a process-pool map).
"""
