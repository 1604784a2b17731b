"""``trainer.max_steps`` counts batches for every model, whatever its number of optimisers; ``metrics.json`` and the
log say the batches and images seen, also across a resume.

Lightning's own ``global_step`` counts optimiser steps (4 a batch for the MLP-ALAE), so each test checks the batch
count against Lightning's independent record of the batches it ran (the checkpoint's loop state), not only against
genbench's own counter. Digits: 22 batches of 64 an epoch, so N=25 stops inside the second epoch.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch

from genbench.models.alae import OPTIMIZER_STEPS_PER_BATCH
from genbench.run.checkpoints import load_checkpoint
from genbench.run.validation import ConfigError, validate_config
from genbench.train import train
from helpers import compose_config

N = 25
BATCH = 64
PER_EPOCH = 22
FAST = [
    "trainer.accelerator=cpu",
    "logger=none",
    "eval=none",
    "trainer.max_epochs=-1",
    f"trainer.max_steps={N}",
]
MODELS = {"vae": ["model=vae"], "glo": ["model=glo"], "alae": ["experiment=alae_tiny"]}
STEPS_PER_BATCH = {"vae": 1, "alae": OPTIMIZER_STEPS_PER_BATCH}  # GLO's count is its own business


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def checkpoint(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.ckpt")


def lightning_batches(saved: dict) -> int:
    """The batches Lightning's training loop completed, from its own loop state in the checkpoint."""
    return saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_stops_after_max_steps_batches(model, tmp_path, cache_dir, caplog):
    """One optimiser (VAE), a generator plus a code table (GLO) and four optimiser steps a batch (MLP-ALAE): each
    trains exactly N batches, and metrics.json and the log say N batches and N x batch size images."""
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="genbench"):
        metrics = train(compose_config([*MODELS[model], *FAST, "logger=csv"], run_dir))
    saved = record(run_dir)
    assert saved["status"] == "finished"
    assert saved["batches_seen"] == metrics["batches_seen"] == N
    assert saved["images_seen"] == N * BATCH
    assert lightning_batches(checkpoint(run_dir)) == N
    assert saved["epochs"] == N // PER_EPOCH + 1  # stopped inside the second epoch
    if (
        model in STEPS_PER_BATCH
    ):  # Lightning's step is an optimiser step: max_steps=N would have been N / 4 batches
        assert saved["global_step"] == N * STEPS_PER_BATCH[model]
    # the last batch is logged (it is not an epoch's last): metrics.json's train loss is that batch's
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    last = [r for r in rows if any(v for k, v in r.items() if k.startswith("train/"))][-1]
    assert int(last["step"]) == N - 1
    terms = {k: float(v) for k, v in last.items() if k.startswith("train/") and v}
    assert terms and all(saved[k.replace("/", "_")] == pytest.approx(v) for k, v in terms.items())
    logged = caplog.text
    assert f"epoch 1 batches {PER_EPOCH}/{N} images {PER_EPOCH * BATCH}" in logged
    assert f"trained {N} batches, {N * BATCH} images" in logged


def test_an_epoch_limit_reached_first_still_stops_and_says_so(tmp_path, cache_dir, caplog):
    """Both limits apply, the first reached ends training; a batch limit the epochs cut short is a warning that
    names both and the remedy."""
    overrides = ["model=vae", *FAST, "trainer.max_epochs=1", "trainer.max_steps=100"]
    with caplog.at_level(logging.WARNING, logger="genbench"):
        train(compose_config(overrides, tmp_path / "run"))
    assert record(tmp_path / "run")["batches_seen"] == PER_EPOCH
    assert "trainer.max_epochs=1 ends training after 22 batches" in caplog.text
    assert "trainer.max_epochs=-1" in caplog.text


@pytest.mark.parametrize(
    ("model", "crash_at"),
    [("vae", 3), ("alae", 3), ("glo", 3), ("vae", 8), ("glo", 8)],
    ids=["vae-mid-run", "alae-mid-run", "glo-mid-run", "vae-at-the-limit", "glo-at-the-limit"],
)
def test_a_resumed_run_stops_at_the_same_batch_total(model, crash_at, tmp_path, cache_dir, monkeypatch):
    """A run that dies right after a checkpoint (the 3rd: batch 12 of the first epoch; the 8th: the end of
    training, before the final evaluation), continued with resume=true, trains to N batches in all and no further,
    counts N batches and N x batch size images over both segments, and ends with the weights of an uninterrupted
    run (GLO's end-of-training batch-norm recalibration and sampler fit included)."""
    from genbench.run import callbacks

    overrides = [*MODELS[model], *FAST, "checkpoint.every_n_steps=4"]
    # saves after batches 4, 8, 12, 16, 20, 22 (the first epoch's end), 24 and 25 (the end of training; not at the
    # end of the epoch the limit stops, whose end-of-training hooks follow that checkpoint)
    train(compose_config(overrides, tmp_path / "ref"))
    original = callbacks.LastCheckpoint.save

    def crash(self, trainer, why):
        original(self, trainer, why)
        if self.saves == crash_at:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(callbacks.LastCheckpoint, "save", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose_config(overrides, tmp_path / "run"))
    crashed = record(tmp_path / "run")
    assert crashed["status"] == "failed" and crashed["batches_seen"] <= N
    monkeypatch.setattr(callbacks.LastCheckpoint, "save", original)
    train(compose_config([*overrides, "resume=true"], tmp_path / "run"))
    resumed, ref = record(tmp_path / "run"), record(tmp_path / "ref")
    assert resumed["status"] == "finished"
    assert resumed["batches_seen"] == ref["batches_seen"] == N
    assert resumed["images_seen"] == ref["images_seen"] == N * BATCH
    assert resumed["global_step"] == ref["global_step"]
    assert lightning_batches(checkpoint(tmp_path / "run")) == N
    a, b = checkpoint(tmp_path / "ref")["state_dict"], checkpoint(tmp_path / "run")["state_dict"]
    assert a.keys() == b.keys()
    assert not [k for k in a if not torch.equal(a[k], b[k])], "weights differ from the uninterrupted run"


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "abc", "true"])
def test_a_bad_batch_limit_is_one_line_naming_the_key(value, tmp_path):
    cfg = compose_config(["trainer.max_steps=" + value], tmp_path / "run")
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    message = str(error.value)
    assert message.startswith("trainer.max_steps=") and value in message.split(":")[0]
    assert ": must be -1 (no batch limit) or a number of batches >= 1;" in message
    assert "\n" not in message and "set e.g. trainer.max_steps=2000" in message


def test_no_epoch_limit_needs_a_batch_limit(tmp_path):
    with pytest.raises(ConfigError, match=r"^trainer\.max_epochs=-1: .*only with a batch limit"):
        validate_config(compose_config(["trainer.max_epochs=-1"], tmp_path / "run"))
    validate_config(compose_config(["trainer.max_epochs=-1", "trainer.max_steps=10"], tmp_path / "ok"))
