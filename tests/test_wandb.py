"""logger=wandb, offline (no account, no server): what lands in the W&B run files, one run per job, resumable."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import wandb
from wandb.proto import wandb_internal_pb2

from genbench.train import train
from helpers import compose_config

SAMPLES = "+eval.evaluators.samples={_target_:genbench.evaluators.pictures.SampleGrid,rows:4}"
RECON = "+eval.evaluators.reconstruction={_target_:genbench.evaluators.reconstruction.ReconstructionMSE,n_images:200,periodic_n_images:100,batch_size:200}"


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch) -> dict[str, str]:
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
        "GENBENCH_CACHE": str(tmp_path / "cache"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def wandb_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """The records of a W&B transaction log (run-<id>.wandb): a 7-byte header, then LevelDB-log chunks in 32 KiB
    blocks (4-byte CRC, 2-byte length, 1-byte type: 1 full, 2 first, 3 middle, 4 last), each record a protobuf."""
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:  # zero padding to the block's end
            pos += (block - pos % block) % block
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def read_offline_run(run_dir: Path) -> dict:
    """The run record, config and history (key -> list of values) of the run directory's offline W&B runs."""
    (log_file,) = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    run, config, history = None, {}, {}
    for record in wandb_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history.setdefault(key, []).append(json.loads(item.value_json))
    assert run is not None
    return {"run": run, "config": config, "history": history, "dir": log_file.parent}


def test_sweep_jobs_get_their_own_grouped_runs(tmp_path, wandb_offline):
    """-m seed=0,1 runs both jobs in one process: two W&B runs, one group, tags, losses, metrics, pictures, config."""
    overrides = [
        "model=vae",
        "logger=wandb",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=5",
        "eval=none",
        SAMPLES,
        RECON,
    ]
    result = subprocess.run(
        [sys.executable, "-m", "genbench", "-m", "seed=0,1", *overrides],
        cwd=tmp_path,
        env={**os.environ, **wandb_offline},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (sweep,) = list((tmp_path / "multirun").iterdir())
    run_dirs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(run_dirs) == 2
    ids = []
    for seed, run_dir in enumerate(run_dirs):
        logged = read_offline_run(run_dir)
        run, history = logged["run"], logged["history"]
        ids.append(run.run_id)
        assert run.run_id == (run_dir / "wandb_id").read_text().strip()
        assert run.run_group == sweep.name
        assert list(run.tags) == ["vae", "digits", f"seed{seed}"]
        assert logged["config"]["seed"] == seed and logged["config"]["model_name"] == "vae"
        assert logged["config"]["trainer"]["max_epochs"] == 1
        assert history["train/loss"] and history["val/loss"]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert history["eval/recon_mse_test"] == [pytest.approx(metrics["recon_mse_test"])]
        (image,) = history["pictures/samples/filenames"]
        assert (logged["dir"] / "files" / image[0]).is_file()
    assert ids[0] != ids[1]


def test_resumed_run_continues_the_same_wandb_run(tmp_path, wandb_offline):
    common = ["trainer.accelerator=cpu", "logger=wandb", "eval=none", "trainer.log_every_n_steps=5"]
    first = tmp_path / "first"
    train(compose_config([*common, "trainer.max_epochs=1"], first))
    run_id = (first / "wandb_id").read_text().strip()
    # resumed into a new run directory: the id comes from the checkpoint's run directory
    resumed = tmp_path / "resumed"
    train(
        compose_config(
            [*common, "trainer.max_epochs=2", f"ckpt_path={first / 'checkpoints/last.ckpt'}"], resumed
        )
    )
    assert (resumed / "wandb_id").read_text().strip() == run_id
    wandb.teardown()  # flush the in-process W&B service's files before reading them
    before, after = read_offline_run(first), read_offline_run(resumed)
    assert after["run"].run_id == run_id
    assert min(after["history"]["trainer/global_step"]) > max(before["history"]["trainer/global_step"])
