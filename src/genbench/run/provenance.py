"""What produced a result: library versions and the git commit, recorded in metrics.json and bench.json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LIBRARIES = (
    "torch",
    "torchvision",
    "pytorch-lightning",
    "hydra-core",
    "torchmetrics",
    "torch-fidelity",
    "wandb",
    "numpy",
)


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": sys.version.split()[0], "genbench": md.version("genbench")}
    for name in LIBRARIES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
