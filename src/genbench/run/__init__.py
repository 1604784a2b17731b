"""The run: everything about one training run's life that is not a model, a dataset or a metric.

``record`` (metrics.json: statuses, merge rules), ``provenance`` (versions, commit), ``paths`` (config and cache
roots), ``checkpoints`` (safe loading, atomic saving, compatibility), ``callbacks`` (lifecycle: checkpoints during
training, preemption, divergence, throughput, RNG), ``loggers``, ``launcher`` and ``worker`` (DDP ranks),
``resume`` (finding a run to continue), ``errors`` (user errors shown as one line).
"""
