"""Where genbench reads its configs and keeps its caches: one answer for every entry point.

The cache root is ``$GENBENCH_CACHE`` when set, else ``~/.cache/genbench``; each kind of cached object has its own
folder below it (decoded tensors, classifiers, reference features, locks), never the data root, which may be
read-only.
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[3] / "conf"
CACHE_ENV = "GENBENCH_CACHE"


def cache_root() -> Path:
    """``$GENBENCH_CACHE`` when set, else ``~/.cache/genbench``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "genbench"


def tensor_cache_dir() -> Path:
    """Decoded dataset splits."""
    return cache_root() / "tensors"


def classifier_cache_dir() -> Path:
    """Trained feature classifiers."""
    return cache_root() / "classifiers"


def feature_cache_dir() -> Path:
    """Reference-set features of the generative metrics."""
    return cache_root() / "features"
