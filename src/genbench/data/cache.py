"""On-disk cache of decoded splits, so images are decoded once per dataset, split and size."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from genbench.data.sources import ImageArrays, ImageSource
from genbench.io import torch_save
from genbench.run.paths import tensor_cache_dir

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$GENBENCH_CACHE/tensors`` (default ``~/.cache/genbench/tensors``): always writable, never the data root."""
    return tensor_cache_dir()


def load_split(source: ImageSource, split: str, cache_dir: Path | None) -> ImageArrays:
    """Decode ``split`` of ``source``, through the cache when ``cache_dir`` is set."""
    if cache_dir is None:
        return source.load(split)
    path = Path(cache_dir) / f"{source.cache_key(split)}.pt"
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            return ImageArrays(stored["images"], stored["labels"])
        except Exception as exc:  # any unreadable cache file is rebuilt from the source, never trusted
            log.warning("ignoring unreadable cache file %s (%s); decoding %s again", path, exc, source.name)
    arrays = source.load(split)
    try:
        torch_save({"images": arrays.images, "labels": arrays.labels}, path)
    except OSError as exc:
        log.warning("could not write the data cache %s (%s); continuing without it", path, exc)
    return arrays
