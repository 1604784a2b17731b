"""``<sweep dir>/summary.md``: the Hydra callback that tabulates every job of a multirun (genbench.run.sweep_summary)."""

from __future__ import annotations

import atexit
import json
import socket
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from genbench.run import sweep_summary
from genbench.run.sweep_summary import SUMMARY_FILE, SweepSummary, write_summary
from helpers import run_genbench


def job(sweep: Path, name: str, record: dict | None, overrides: list[str] | None = None) -> Path:
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {o}\n" for o in overrides or ["trainer.max_epochs=1"])
    )
    if record is not None:
        (folder / "metrics.json").write_text(json.dumps(record))
    return folder


def table(summary: str) -> list[list[str]]:
    """The markdown table's rows (header first), cells stripped."""
    rows = [line for line in summary.splitlines() if line.startswith("|") and not line.startswith("|---")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def multirun_config(sweep: Path):
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})


@pytest.fixture
def fake_sweep(tmp_path) -> Path:
    sweep = tmp_path / "multirun" / "2026-01-01_00-00-00"
    who = {"data": "digits", "image_size": 16}
    job(
        sweep,
        "0_vae_digits_seed0",
        {
            "status": "finished",
            "model": "vae",
            "seed": 0,
            **who,
            "fid_classifier@prior": 75.391,
            "recon_mse_test": 0.04506,
            "train_seconds": 1.97,
            "protocols": {},
        },
        ["seed=0", "trainer.max_epochs=1"],
    )
    job(
        sweep,
        "1_glo_digits_seed1",
        {
            "status": "failed",
            "model": "glo",
            "seed": 1,
            **who,
            "error": "ConfigError: data.batch_size=0: must be >= 1\ntraceback",
        },
        ["seed=1", "trainer.max_epochs=1"],
    )
    job(
        sweep,
        "2_glo_digits_seed2",
        {
            "status": "interrupted",
            "model": "glo",
            "seed": 2,
            **who,
            "signal": "SIGTERM",
            "epoch": 3,
            "global_step": 120,
            "fid_classifier@gaussian": 50.0,
        },
        ["seed=2", "trainer.max_epochs=1"],
    )
    dead = {
        "status": "running",
        "model": "glo",
        "seed": 3,
        **who,
        "pid": 2**22 + 12345,
        "host": socket.gethostname(),
    }
    job(sweep, "10_glo_digits_seed3", dead, ["seed=3", "trainer.max_epochs=1"])
    job(sweep, "3_glo_digits_seed4", None, ["seed=4", "trainer.max_epochs=1"])  # never wrote a record
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def test_summary_lists_every_job_with_status_metrics_and_notes(fake_sweep, capsys):
    SweepSummary().on_multirun_end(config=multirun_config(fake_sweep))
    summary = (fake_sweep / SUMMARY_FILE).read_text()
    header, *rows = table(summary)
    assert header == [
        "job",
        "model",
        "data",
        "seed",
        "status",
        "overrides",
        "fid_classifier@gaussian",
        "fid_classifier@prior",
        "recon_mse_test",
        "train_seconds",
        "note",
    ]
    by_job = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert [row[0] for row in rows] == [  # job order: Hydra's job numbers, not the names' order
        "0_vae_digits_seed0",
        "1_glo_digits_seed1",
        "2_glo_digits_seed2",
        "3_glo_digits_seed4",
        "10_glo_digits_seed3",
    ]
    first = by_job["0_vae_digits_seed0"]
    assert (first["model"], first["data"], first["seed"], first["status"]) == (
        "vae",
        "digits",
        "0",
        "finished",
    )
    assert (first["fid_classifier@prior"], first["recon_mse_test"], first["train_seconds"]) == (
        "75.39",
        "0.04506",
        "1.97",
    )
    assert first["overrides"] == "seed=0"  # what differs between jobs; trainer.max_epochs=1 is common to all
    assert by_job["1_glo_digits_seed1"]["status"] == "failed"
    assert by_job["1_glo_digits_seed1"]["note"] == "ConfigError: data.batch_size=0: must be >= 1"
    assert by_job["2_glo_digits_seed2"]["note"] == "SIGTERM at epoch 3, step 120"
    assert by_job["10_glo_digits_seed3"]["status"] == "running"
    assert "process gone" in by_job["10_glo_digits_seed3"]["note"]
    assert by_job["3_glo_digits_seed4"]["status"] == "no record"
    assert "5 jobs (1 failed, 1 finished, 1 interrupted, 1 no record, 1 running)" in summary
    assert "ended early" not in summary
    printed = capsys.readouterr().out
    assert "0_vae_digits_seed0" in printed and "10_glo_digits_seed3" in printed and "75.39" in printed
    assert not [p for p in fake_sweep.iterdir() if p.name.endswith(".tmp")]  # written atomically


def test_summary_never_fails_the_sweep(tmp_path, monkeypatch, caplog):
    SweepSummary().on_multirun_end(config=OmegaConf.create({}))  # no hydra node
    SweepSummary().on_multirun_end(config=multirun_config(tmp_path / "missing"))
    assert write_summary(tmp_path / "missing") is None

    def broken(sweep_dir):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(sweep_summary, "summary_rows", broken)
    SweepSummary().on_multirun_end(config=multirun_config(tmp_path))
    assert "disk on fire" in caplog.text and not (tmp_path / SUMMARY_FILE).exists()


def test_a_sweep_that_ends_early_still_gets_a_summary_at_exit(fake_sweep):
    callback = SweepSummary()
    callback.on_multirun_start(config=multirun_config(fake_sweep))
    try:
        callback._at_exit()  # what atexit runs when a failed job ended the process before on_multirun_end
    finally:
        atexit.unregister(callback._at_exit)
    assert "The sweep ended early" in (fake_sweep / SUMMARY_FILE).read_text()
    (fake_sweep / SUMMARY_FILE).unlink()
    callback._at_exit()  # once only
    assert not (fake_sweep / SUMMARY_FILE).exists()


def genbench(*overrides: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = run_genbench(*overrides, cache=cwd / "cache", cwd=cwd, timeout=400)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def only_sweep(cwd: Path) -> Path:
    (sweep,) = [p for p in (cwd / "multirun").iterdir() if p.is_dir()]
    return sweep


def test_multirun_writes_summary_md_listing_both_jobs(tmp_path):
    result = genbench("-m", "seed=0,1", "trainer.max_epochs=1", "eval=none", "logger=none", cwd=tmp_path)
    sweep = only_sweep(tmp_path)
    header, *rows = table((sweep / SUMMARY_FILE).read_text())
    assert [(row[0], row[3], row[4]) for row in rows] == [
        ("0_glo_digits_seed0", "0", "finished"),
        ("1_glo_digits_seed1", "1", "finished"),
    ]
    assert "train_seconds" in header and [row[header.index("overrides")] for row in rows] == [
        "seed=0",
        "seed=1",
    ]
    assert "sweep summary" in result.stdout and "1_glo_digits_seed1" in result.stdout


def test_a_failed_job_still_leaves_a_summary(tmp_path):
    result = genbench(
        "-m",
        "data.batch_size=64,0",
        "trainer.max_epochs=1",
        "eval=none",
        "logger=none",
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2  # the refused config's exit code is kept
    summary = (only_sweep(tmp_path) / SUMMARY_FILE).read_text()
    _, *rows = table(summary)
    assert [row[4] for row in rows] == ["finished", "failed"] and "data.batch_size=0" in rows[1][-1]
    assert "The sweep ended early" in summary
