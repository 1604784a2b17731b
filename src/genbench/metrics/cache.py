"""Disk cache for reference features, so the real split's Inception features are computed once per protocol.

Keyed by a content hash of a small dict (dataset, split, image size, extractor, N): change any of them and the
key changes, so a stale file can never be picked up. Files are written atomically; an unreadable or mismatched
file is recomputed with a warning, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genbench.io import torch_save

log = logging.getLogger(__name__)


def cache_key_hash(key: dict[str, Any]) -> str:
    """A stable 16-hex-digit hash of a JSON-serialisable ``key`` (field order does not matter)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def feature_cache_path(key: dict[str, Any], cache_dir: Path) -> Path:
    """The file ``cached_features`` uses for ``key``."""
    return Path(cache_dir) / f"features-{cache_key_hash(key)}.pt"


def cached_features(key: dict[str, Any], compute: Callable[[], Tensor], cache_dir: Path) -> Tensor:
    """Features (N, D) for ``key``: loaded from ``cache_dir`` if a valid file exists, else ``compute()``d and saved.

    The file stores the key beside the tensor and the key is checked on load. Returns a CPU tensor either way.
    """
    path = feature_cache_path(key, cache_dir)
    stored_key = json.loads(json.dumps(key, sort_keys=True))  # tuples -> lists, as it reads back from disk
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored["key"] == stored_key and isinstance(stored["features"], Tensor):
                return stored["features"]
            log.warning("cache file %s holds another key; recomputing", path)
        except Exception as exc:  # any unreadable cache file is recomputed, never trusted
            log.warning("ignoring unreadable feature cache %s (%s); recomputing", path, exc)
    features = compute().detach().cpu()
    try:
        torch_save({"key": stored_key, "features": features}, path)
    except OSError as exc:
        log.warning("could not write the feature cache %s (%s); continuing without it", path, exc)
    return features
