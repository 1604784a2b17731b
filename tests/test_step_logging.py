"""Training steps log only when their values reach a logger: the loggers see what logging every step gives them."""

from __future__ import annotations

import csv
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from genbench.interface import GenerativeModel

BATCHES, EPOCHS, EVERY = 9, 2, 4  # logging steps 3, 7, 11, 15; epochs end at 8 and 17


class _Counting(GenerativeModel):
    """Logs its global batch number as ``train/loss`` and ``train/step_value``, the genbench way or every step."""

    def __init__(self, every_step: bool) -> None:
        super().__init__()
        self.latent_dim, self.every_step = 2, every_step
        self.net = torch.nn.Linear(2, 2)
        self.log_calls = 0

    def training_step(self, batch, batch_idx):
        value = torch.tensor(float(self.current_epoch * BATCHES + batch_idx))
        metrics = {"train/loss": value, "train/step_value": value}
        if self.every_step:
            self.log_dict(metrics, batch_size=1)
        else:
            self.log_train_step(metrics, 1, batch_idx)
        return self.net(batch[0]).pow(2).mean()

    def log_dict(self, *args, **kwargs):
        self.log_calls += 1
        super().log_dict(*args, **kwargs)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    encode = decode = sample = reconstruct = None


def _fit(every_step: bool, tmp_path: Path) -> tuple[_Counting, pl.Trainer, list[dict[str, str]]]:
    model = _Counting(every_step)
    logger = pl.loggers.CSVLogger(tmp_path, name=str(every_step))
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=EPOCHS,
        log_every_n_steps=EVERY,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(BATCHES, 2)), batch_size=1))
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/step_value")]
    return model, trainer, rows


def test_loggers_get_the_same_rows_as_logging_every_step(tmp_path):
    every, _, every_rows = _fit(True, tmp_path)
    sparse, trainer, sparse_rows = _fit(False, tmp_path)
    assert [int(r["step"]) for r in every_rows] == [3, 7, 11, 15]
    assert sparse_rows == every_rows
    # logged on the logging steps and each epoch's last batch only
    assert every.log_calls == BATCHES * EPOCHS
    assert sparse.log_calls == 2 * 6  # steps 3, 7, 8, 11, 15, 17; the bar's key, then the others
    # the epoch's last batch was logged: callback_metrics end fresh, not at the last logging step (15)
    assert trainer.callback_metrics["train/step_value"] == EPOCHS * BATCHES - 1
    assert trainer.progress_bar_metrics["train/loss"] == EPOCHS * BATCHES - 1


def test_outside_a_trainer_every_call_reaches_the_host():
    model = _Counting(every_step=False)
    seen = []

    class Host:
        def log_dict(self, metrics, step=None):
            seen.append(dict(metrics))

    host = Host()
    model.fabric = host
    model.log_train_step({"train/loss": 1.0, "train/x": 2.0}, batch_size=1, batch_idx=5)
    assert {k for m in seen for k in m} == {"train/loss", "train/x"}
