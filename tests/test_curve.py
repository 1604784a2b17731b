"""Every periodic evaluation is a point of the run's learning curve in metrics.json: epoch, batches and images
seen, training-loop seconds (evaluation excluded) and the values at the periodic N, kept across a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genbench.run import callbacks
from genbench.run.validation import ConfigError, validate_config
from genbench.train import train
from helpers import compose_config

PER_EPOCH = 22  # digits: 1,408 training images in batches of 64
CURVE = [
    "model=vae",
    "trainer.accelerator=cpu",
    "logger=none",
    "eval=fast",
    "trainer.max_epochs=3",
    "eval.every_n_epochs=1",
    "eval.periodic_evaluators=[reconstruction]",
    "eval.periodic_at_end=true",
]


def curve(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["curve"]


def test_each_epoch_is_a_curve_point_at_the_periodic_n(tmp_path, cache_dir):
    train(compose_config(CURVE, tmp_path / "run"))
    got = curve(tmp_path / "run")
    points = got["points"]
    assert [p["epoch"] for p in points] == [1, 2, 3]  # the last epoch too (periodic_at_end)
    assert [p["batches_seen"] for p in points] == [PER_EPOCH, 2 * PER_EPOCH, 3 * PER_EPOCH]
    assert [p["images_seen"] for p in points] == [1408, 2816, 4224]
    seconds = [p["train_loop_seconds"] for p in points]
    assert 0 < seconds[0] < seconds[1] < seconds[2]
    # only the named evaluator ran periodically, at its periodic N
    assert all(set(p["values"]) == {"recon_mse_train", "recon_mse_test", "recon_psnr_train", "recon_psnr_test",
                                    "recon_ssim_test"} for p in points)  # fmt: skip
    assert points[-1]["values"]["recon_mse_train"] < points[0]["values"]["recon_mse_train"]
    assert got["protocols"]["recon_mse_train"]["n_images"] == 200


def test_a_resumed_run_keeps_the_curve_of_its_first_segment(tmp_path, cache_dir, monkeypatch):
    """A run that dies after its second epoch's checkpoint and is resumed has the curve of the uninterrupted run:
    three points, the first two from the checkpoint."""
    original = callbacks.LastCheckpoint.save

    def crash(self, trainer, why):
        original(self, trainer, why)
        if trainer.current_epoch == 1 and "epoch" in why:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(callbacks.LastCheckpoint, "save", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose_config(CURVE, tmp_path / "run"))
    monkeypatch.setattr(callbacks.LastCheckpoint, "save", original)
    train(compose_config([*CURVE, "resume=true"], tmp_path / "run"))
    points = curve(tmp_path / "run")["points"]
    assert [p["epoch"] for p in points] == [1, 2, 3]
    assert [p["images_seen"] for p in points] == [1408, 2816, 4224]


def test_an_unknown_periodic_evaluator_is_a_config_error(tmp_path):
    cfg = compose_config(["eval.periodic_evaluators=[fid_nonsense]"], tmp_path / "run")
    with pytest.raises(ConfigError, match="eval.periodic_evaluators"):
        validate_config(cfg)
