"""Reader for the IDX format of MNIST and Fashion-MNIST, straight from the official ``.gz`` files.

Reads without decompressing to disk, so the data root may be read-only. Every check that fails names the file.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from genbench.data.errors import DataError

# IDX magic numbers: 0x00000803 = unsigned bytes, 3 dims (images); 0x00000801 = unsigned bytes, 1 dim (labels).
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


def _read_gz(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(
            f"{path} is not a complete gzip file ({exc}). Delete it and download it again "
            "(set data.download=true where the network allows)."
        ) from exc


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Return the array stored in an IDX ``.gz`` file, after checking its magic number and length."""
    raw = _read_gz(path)
    if len(raw) < 8:
        raise DataError(f"{path} is too short to be an IDX file ({len(raw)} bytes).")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{path} has IDX magic number {magic}, expected {expected_magic}: wrong or corrupt file."
        )
    ndim = raw[3]
    header_len = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    payload = len(raw) - header_len
    if payload != expected:
        raise DataError(
            f"{path} holds {payload} bytes of data but its header promises {expected} (shape {shape}): "
            "the file is truncated or corrupt."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)


def read_images_and_labels(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 from a pair of IDX files, checked to agree in count."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels."
        )
    return images, labels
