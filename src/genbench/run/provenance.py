"""What produced a result: library versions, the machine and the git commit, recorded in metrics.json and
bench.json."""

from __future__ import annotations

import os
import platform
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


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(torch_threads: int, device: str = "cpu") -> dict[str, object]:
    """Where a run ran: platform, CPU model, logical CPUs, torch's threads and the accelerator (timings mean
    nothing without it). Torch's values are passed in: this module stays importable without torch."""
    return {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch_threads,
        "device": device,
    }
