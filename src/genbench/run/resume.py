"""``resume=true``: the same command continues its own earlier run, in that run's directory.

Hydra names a run's directory by the time it starts (``outputs/<model>/<data>/<time>``), so the same command run
again would get a new one. With ``resume=true`` the directory is instead the newest earlier one under the same parent
whose command-line overrides were the same (``resume`` itself aside); with no such run it is a new one, so a job
script can always say ``resume=true`` (SLURM requeues, retries). ``resume=<run_dir>`` names the run explicitly.
Multiruns resume the same way: the newest sweep directory of the same sweep overrides, and each job its own subdir.

The two resolvers are registered before Hydra composes the config (``conf/config.yaml`` uses them in
``hydra.run.dir`` and ``hydra.sweep.dir``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf


def wants_resume(resume: Any) -> bool:
    """``resume`` is on: true, or a run directory."""
    if isinstance(resume, str):
        return resume.strip().lower() not in ("", "false", "0", "none", "null", "no")
    return bool(resume)


def _comparable(overrides: Sequence[str]) -> list[str]:
    return sorted(str(o) for o in overrides if not str(o).lstrip("+~").startswith("resume="))


def _read_overrides(marker: Path, key: Sequence[str]) -> list[str] | None:
    try:
        loaded = yaml.safe_load(marker.read_text())
        for part in key:
            loaded = loaded[part]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return [str(o) for o in loaded] if isinstance(loaded, list) else None


def _newest_match(parent: Path, marker: str, key: Sequence[str], overrides: Sequence[str]) -> Path | None:
    if not parent.is_dir():
        return None
    wanted = _comparable(overrides)
    matches = []
    for folder in parent.iterdir():
        found = _read_overrides(folder / marker, key) if folder.is_dir() else None
        if found is not None and _comparable(found) == wanted:
            matches.append(folder)
    return max(matches, key=lambda f: (f.stat().st_mtime, f.name)) if matches else None


def run_dir(parent: str, stamp: str, resume: Any, overrides: Sequence[str]) -> str:
    """``hydra.run.dir``: ``<parent>/<stamp>``, or the run to resume."""
    if (
        isinstance(resume, str)
        and wants_resume(resume)
        and resume.strip().lower() not in ("true", "1", "yes")
    ):
        return str(Path(resume).expanduser())
    if wants_resume(resume):
        found = _newest_match(Path(parent), ".hydra/overrides.yaml", (), list(overrides))
        if found is not None:
            return str(found)
    return f"{parent}/{stamp}"


_SWEEP_CHOICES: dict[tuple[str, str], str] = {}


def sweep_dir(parent: str, stamp: str, resume: Any, overrides: Sequence[str]) -> str:
    """``hydra.sweep.dir``: ``<parent>/<stamp>``, or the sweep to resume.

    Hydra resolves it once for the sweep (``overrides`` are then the sweep's) and again in each job (with the job's
    own overrides, and the sweep's ``${now:}`` stamp): the sweep's answer is kept, in this process and in
    ``<parent>/.resume-<stamp>`` for jobs that run in other processes (joblib, submitit).
    """
    if not wants_resume(resume):
        return f"{parent}/{stamp}"
    key = (parent, stamp)
    if key not in _SWEEP_CHOICES:
        marker = Path(parent) / f".resume-{stamp}"
        if marker.is_file():
            _SWEEP_CHOICES[key] = marker.read_text().strip()
        else:
            found = _newest_match(
                Path(parent), "multirun.yaml", ("hydra", "overrides", "task"), list(overrides)
            )
            _SWEEP_CHOICES[key] = str(found) if found is not None else f"{parent}/{stamp}"
            if found is not None:
                from genbench.io import atomic_path

                with atomic_path(marker) as tmp:
                    tmp.write_text(_SWEEP_CHOICES[key] + "\n")
    return _SWEEP_CHOICES[key]


def register_resolvers() -> None:
    """``${genbench_run_dir:parent,stamp,resume,overrides}`` and ``${genbench_sweep_dir:...}``."""
    for name, fn in (("genbench_run_dir", run_dir), ("genbench_sweep_dir", sweep_dir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(
                name, lambda p, s, r, o, fn=fn: fn(str(p), str(s), r, list(o) if o is not None else [])
            )
