"""Test helpers: compose the real Hydra config in-process, as `python -m genbench` would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from genbench.run.resume import register_resolvers

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: list[str], run_dir: Path) -> DictConfig:
    """The composed run config for ``overrides``, with Hydra's runtime fields set and run_dir pinned."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"run_dir={run_dir}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_genbench(
    *args: str, cache: Path, module: str = "genbench", timeout: int = 300, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` as a user runs it, with a private ``GENBENCH_CACHE`` and extra ``env``."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "GENBENCH_CACHE": str(cache), "PYTHONUNBUFFERED": "1", **env},
        timeout=timeout,
    )
