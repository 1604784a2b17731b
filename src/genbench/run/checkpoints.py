"""Checkpoints: loaded without executing anything, written atomically, refused when another configuration wrote them.

Loading: always ``torch.load(..., weights_only=True)``: tensors and plain containers only. Everything genbench puts
in a checkpoint (weights, optimiser and loop states, its resolved config, RNG states) is made of those. A pickle that
names any other global (``os.system``, a class) is refused with :class:`UnsafeCheckpoint` before anything runs.

Saving: :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO``) writes ``<name>.<pid>.<random>.tmp`` beside the
target, fsyncs it and renames it over the target, so a kill at any moment leaves the previous checkpoint or the new
one, never half of one (the temp file lives in the same folder, so the rename is atomic on any filesystem).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from genbench.errors import UserError
from genbench.io import atomic_path

LAST = "last.ckpt"


def last_checkpoint(run_dir: str | Path) -> Path:
    """Where a run keeps its latest checkpoint."""
    return Path(run_dir) / "checkpoints" / LAST


class IncompatibleCheckpoint(UserError, ValueError):
    """The checkpoint was written by a different model or dataset, is corrupt, or is not a genbench checkpoint."""


class UnsafeCheckpoint(IncompatibleCheckpoint):
    """The checkpoint holds objects other than tensors and plain containers: loading it could execute code."""


class CheckpointWriteError(UserError, OSError):
    """The checkpoint folder cannot be written."""


def _refused_global(exc: pickle.UnpicklingError) -> str | None:
    """The global a weights_only load refused ('unsupported GLOBAL posix.system ...'), or None when the file is
    simply not a pickle (garbage, truncated)."""
    for line in str(exc).splitlines():
        if "GLOBAL" in line or "Unsupported global" in line:
            return line.strip().rstrip(".")
    return None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` (on the CPU), read with ``weights_only=True``.

    Raises :class:`IncompatibleCheckpoint` (missing, unreadable, not a dict) or :class:`UnsafeCheckpoint`.
    """
    path = Path(path)
    if not path.is_file():
        raise IncompatibleCheckpoint(f"checkpoint {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(exc)
        if refused is not None:
            raise UnsafeCheckpoint(
                f"refusing to load checkpoint {path}: it holds more than tensors and plain containers "
                f"({refused}); genbench never executes code from a checkpoint. Use a checkpoint written by genbench"
            ) from None
        raise IncompatibleCheckpoint(
            f"cannot read checkpoint {path}: not a torch checkpoint (corrupt or truncated)"
        ) from None
    except Exception as exc:  # torch raises many types for a corrupt file; all mean the same to the user
        raise IncompatibleCheckpoint(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(loaded, dict):
        raise IncompatibleCheckpoint(f"{path} holds a {type(loaded).__name__}, not a checkpoint")
    return loaded


def check_compatible(path: str | Path, config: dict[str, Any]) -> dict[str, Any]:
    """Raise ``IncompatibleCheckpoint`` unless ``path`` was written for the same model class and dataset.

    Returns the loaded checkpoint (so a caller need not read it twice).
    """
    checkpoint = load_checkpoint(path)
    stored = checkpoint.get("genbench_config")
    if not isinstance(stored, dict):
        raise IncompatibleCheckpoint(f"{path} has no genbench config: it was not written by genbench")
    problems = []
    if stored["model"].get("_target_") != config["model"].get("_target_"):
        problems.append(
            f"model {stored['model'].get('_target_')} in the checkpoint, {config['model'].get('_target_')} now"
        )
    for key in ("name", "image_size", "channels"):
        if stored["data"].get(key) != config["data"].get(key):
            problems.append(
                f"data.{key}={stored['data'].get(key)} in the checkpoint, {config['data'].get(key)} now"
            )
    if stored["model"].get("latent_dim") != config["model"].get("latent_dim"):
        problems.append(
            f"model.latent_dim={stored['model'].get('latent_dim')} in the checkpoint, "
            f"{config['model'].get('latent_dim')} now"
        )
    if problems:
        raise IncompatibleCheckpoint(f"cannot resume from {path}: " + "; ".join(problems))
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, but staged beside the target and renamed into place, and read safely."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        try:
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)
        except OSError as exc:
            raise CheckpointWriteError(
                f"cannot write checkpoint {path}: {exc.strerror or exc}; make {path.parent} writable "
                "or choose another run_dir=..."
            ) from None

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        return load_checkpoint(path)
