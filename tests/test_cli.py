"""The command line: a run writes every promised file; bad input fails clearly; a resumed run is exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genbench.run.checkpoints import IncompatibleCheckpoint
from genbench.train import train
from helpers import compose_config

REPO = Path(__file__).resolve().parents[1]


def run_cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GENBENCH_CACHE": str(cwd / "cache"), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "genbench", *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_default_run_writes_every_file(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("trainer.max_epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in (
        "config.yaml",
        "checkpoints/last.ckpt",
        "metrics.json",
        "samples.png",
        "reconstructions.png",
    ):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["data"] == "digits" and metrics["seed"] == 0
    for key in ("recon_mse_train", "recon_mse_test", "train_seconds", "images_per_second"):
        assert metrics[key] > 0, key
    assert metrics["versions"]["torch"] == torch.__version__.split("+")[0] or metrics["versions"]["torch"]
    assert f"run directory: {run_dir}" in result.stdout
    # non-interactive: one line per epoch, not a progress-bar fragment per step
    assert result.stderr.count("\r") == 0


def test_wrong_model_name_lists_choices(tmp_path):
    result = run_cli("model=nope", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode != 0
    assert "model" in result.stderr and "vae" in result.stderr and "mmd_vae" in result.stderr


def test_unknown_config_key_fails(tmp_path):
    result = run_cli("model.no_such_key=1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode != 0 and "no_such_key" in result.stderr


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "state_dict"
    ]


def test_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path / "cache"))
    common = ["model=vae", "trainer.accelerator=cpu", "logger=none", "eval=none", "data.batch_size=128"]
    train(compose_config([*common, "trainer.max_epochs=2"], tmp_path / "full"))
    train(compose_config([*common, "trainer.max_epochs=1"], tmp_path / "part"))
    resumed = tmp_path / "resumed"
    ckpt = tmp_path / "part" / "checkpoints" / "last.ckpt"
    train(compose_config([*common, "trainer.max_epochs=2", f"ckpt_path={ckpt}"], resumed))
    full, again = _weights(tmp_path / "full"), _weights(resumed)
    assert full.keys() == again.keys()
    for key in full:
        assert torch.equal(full[key], again[key]), key


def test_compile_of_a_model_that_cannot_be_compiled_fails_at_start_up(tmp_path, monkeypatch):
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path / "cache"))
    cfg = compose_config(["model=alae", "compile=true", "logger=none", "eval=none"], tmp_path / "run")
    with pytest.raises(ValueError, match="compile=true: ALAE cannot be compiled: .*double backward"):
        train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "double backward" in metrics["error"]
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()  # refused before any training


def test_incompatible_checkpoint_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path / "cache"))
    common = ["model=vae", "trainer.accelerator=cpu", "logger=none", "eval=none", "trainer.max_epochs=1"]
    train(compose_config(common, tmp_path / "a"))
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    with pytest.raises(IncompatibleCheckpoint, match="latent_dim=16 in the checkpoint, 8 now"):
        train(compose_config([*common, "model.latent_dim=8", f"ckpt_path={ckpt}"], tmp_path / "b"))
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "latent_dim" in metrics["error"]
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"garbage")
    with pytest.raises(IncompatibleCheckpoint, match="cannot read checkpoint"):
        train(compose_config([*common, f"ckpt_path={corrupt}"], tmp_path / "c"))
