"""Checkpoint checks: refuse, with a clear message, to resume from a checkpoint another configuration wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class IncompatibleCheckpoint(ValueError):
    """The checkpoint was written by a different model or dataset, or is not a genbench checkpoint."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a corrupt file; all mean the same to the user
        raise IncompatibleCheckpoint(f"cannot read checkpoint {path}: {exc}") from exc


def check_compatible(path: str | Path, config: dict[str, Any]) -> None:
    """Raise ``IncompatibleCheckpoint`` unless ``path`` was written for the same model class and dataset."""
    stored = load_checkpoint(path).get("genbench_config")
    if stored is None:
        raise IncompatibleCheckpoint(f"{path} has no genbench config: it was not written by genbench")
    problems = []
    for key in ("_target_",):
        if stored["model"].get(key) != config["model"].get(key):
            problems.append(
                f"model {stored['model'].get(key)} in the checkpoint, {config['model'].get(key)} now"
            )
    for key in ("name", "image_size", "channels"):
        if stored["data"].get(key) != config["data"].get(key):
            problems.append(
                f"data.{key}={stored['data'].get(key)} in the checkpoint, {config['data'].get(key)} now"
            )
    if stored["model"].get("latent_dim") != config["model"].get("latent_dim"):
        problems.append(
            f"model.latent_dim={stored['model'].get('latent_dim')} in the checkpoint, {config['model'].get('latent_dim')} now"
        )
    if problems:
        raise IncompatibleCheckpoint(f"cannot resume from {path}: " + "; ".join(problems))
