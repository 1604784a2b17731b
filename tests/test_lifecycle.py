"""The run lifecycle: checkpoints during training, exact resume after a kill, signals, safe loading, divergence.

These run real `python -m genbench` processes on the bundled digits and kill them the way a cluster or a user does
(SIGKILL, SIGTERM, SIGUSR1), then compare the resumed run's final weights with an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from genbench.run.callbacks import Diverged
from genbench.run.checkpoints import (
    AtomicCheckpointIO,
    CheckpointWriteError,
    UnsafeCheckpoint,
    load_checkpoint,
)
from genbench.train import train
from helpers import compose_config, run_genbench

REPO = Path(__file__).resolve().parents[1]
MODELS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
# every model, small and fast on digits; 22 batches of 64 per epoch
SMALL = {
    "glo": [],
    "vae": [],
    "mmd_vae": [],
    "alae": ["experiment=alae_tiny"],
    "incremental_glo": [
        "model.stages.subset_epochs=1",
        "model.stages.final_epochs=1",
        "model.stages.encoder_epochs=1",
    ],
}


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"weights differ from the uninterrupted run: {differ}"


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


class Run:
    """A `python -m genbench` process with its stderr captured to a file, so a test can wait for a log line."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.log = cwd / f"run-{time.monotonic_ns()}.log"
        env = {**os.environ, "GENBENCH_CACHE": str(cwd / "cache"), "PYTHONUNBUFFERED": "1"}
        env.pop("SLURM_NTASKS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "genbench", *args],
            cwd=cwd,
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, needle: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"exited ({self.proc.returncode}) before {needle!r}:\n{self.text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"no {needle!r} after {timeout}s:\n{self.text()[-3000:]}")
            time.sleep(0.05)

    def finish(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout=timeout)


COMMON = ["trainer.accelerator=cpu", "eval=none", "trainer.log_every_n_steps=5", "checkpoint.every_n_steps=3"]


def test_sigkill_at_any_moment_then_resume_gives_the_uninterrupted_weights(tmp_path):
    """Killed with SIGKILL mid-epoch three times (after epochs 2, 4 and 6 were logged), each time resumed with the
    same command + resume=true, the run ends with exactly the weights of a run that was never interrupted; the CSV
    log keeps every segment's rows."""
    args = [*COMMON, "trainer.max_epochs=9", "hydra.run.dir=" + str(tmp_path / "ref")]
    assert Run(args, tmp_path).finish() == 0
    run_dir = tmp_path / "run"
    args = [*COMMON, "trainer.max_epochs=9", f"hydra.run.dir={run_dir}"]
    for i, epoch in enumerate((2, 4, 6)):
        run = Run([*args, "resume=true"] if i else args, tmp_path)
        run.wait_for(f"epoch {epoch}/9")
        time.sleep(0.15)  # somewhere inside the next epoch
        run.proc.send_signal(signal.SIGKILL)
        assert run.finish() == -signal.SIGKILL
        assert (
            record(run_dir)["status"] == "running"
        )  # nothing could be written; the leaderboard says "killed"
        saved = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
        assert saved["epoch"] >= epoch - 1  # at most one checkpoint interval old
        assert (
            not list(run_dir.rglob("*.tmp")) or True
        )  # a kill mid-write may leave one: the next run removes it
    last = Run([*args, "resume=true"], tmp_path)
    assert last.finish() == 0, last.text()[-3000:]
    assert "resuming from" in last.text()
    assert not list(run_dir.rglob("*.tmp"))
    assert (
        record(run_dir)["status"] == "finished"
        and record(run_dir)["global_step"] == record(tmp_path / "ref")["global_step"]
    )
    assert_same_weights(weights(tmp_path / "ref"), weights(run_dir))
    rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    ref_rows = (tmp_path / "ref" / "csv" / "metrics.csv").read_text().splitlines()
    assert rows[0] == ref_rows[0] and len(rows) >= len(ref_rows)  # appended, never deleted
    assert not list((run_dir / "checkpoints").glob("last-v*.ckpt"))


def test_sigterm_and_sigusr1_save_exit_non_zero_and_resume_exactly(tmp_path):
    """SIGUSR1 then SIGTERM: each saves a checkpoint at the next batch boundary, exits 128 + signal with an
    'interrupted' record naming the signal and the step; resumed twice, the weights equal an uninterrupted run's."""
    args = [*COMMON, "checkpoint.every_n_steps=0", "trainer.max_epochs=6"]
    assert Run([*args, "hydra.run.dir=" + str(tmp_path / "ref")], tmp_path).finish() == 0
    run_dir = tmp_path / "run"
    args = [*args, f"hydra.run.dir={run_dir}"]
    for i, (signum, epoch) in enumerate(((signal.SIGUSR1, 2), (signal.SIGTERM, 4))):
        run = Run([*args, "resume=true"] if i else args, tmp_path)
        run.wait_for(f"epoch {epoch}/6")
        time.sleep(0.1)
        run.proc.send_signal(signum)
        assert run.finish(timeout=60) == 128 + signum, run.text()[-3000:]
        stopped = record(run_dir)
        assert stopped["status"] == "interrupted" and stopped["signal"] == signal.Signals(signum).name
        saved = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
        assert saved["global_step"] == stopped["checkpoint_global_step"] <= stopped["global_step"]
        assert stopped["epoch"] >= epoch
        assert "Traceback" not in run.text()
    last = Run([*args, "resume=true"], tmp_path)
    assert last.finish() == 0, last.text()[-3000:]
    assert_same_weights(weights(tmp_path / "ref"), weights(run_dir))


def test_sigterm_during_evaluation_stops_it_promptly(tmp_path):
    """The final evaluation (here it first trains the feature classifier, which takes many seconds) stops within
    seconds of SIGTERM; the run is 'interrupted' with the trained weights in last.ckpt, and resume=true evaluates."""
    run_dir = tmp_path / "run"
    args = ["trainer.accelerator=cpu", "trainer.max_epochs=1", "eval=fast", f"hydra.run.dir={run_dir}"]
    run = Run(args, tmp_path)
    run.wait_for("evaluating")
    time.sleep(0.5)
    sent = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish(timeout=60) == 143, run.text()[-3000:]
    assert time.monotonic() - sent < 15
    assert record(run_dir)["status"] == "interrupted" and (run_dir / "checkpoints" / "last.ckpt").is_file()
    resumed = Run([*args, "resume=true"], tmp_path)
    assert resumed.finish() == 0, resumed.text()[-3000:]
    assert record(run_dir)["status"] == "finished" and "recon_mse_test" in record(run_dir)


@pytest.mark.parametrize("crash_at", [4, 6], ids=["mid-epoch", "epoch-end"])
@pytest.mark.parametrize("model", MODELS)
def test_crash_after_a_checkpoint_then_resume_is_exact(model, crash_at, tmp_path, cache_dir, monkeypatch):
    """Every model: a run that dies right after its 4th checkpoint (batch 16 of a 22-batch epoch) or its 6th (the
    first epoch's end, before the epoch-end hooks), continued with resume=true, ends with the weights of an
    uninterrupted run."""
    from genbench.run import callbacks

    common = ["trainer.accelerator=cpu", "logger=none", "eval=none", "checkpoint.every_n_steps=4"]
    common = [f"model={model}", *SMALL[model], *common]
    epochs = "trainer.max_epochs=" + ("4" if model == "incremental_glo" else "2")
    train(compose_config([*common, epochs], tmp_path / "ref"))

    original = callbacks.LastCheckpoint.save

    def crash(self, trainer, why):
        original(self, trainer, why)
        if self.saves == crash_at:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(callbacks.LastCheckpoint, "save", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose_config([*common, epochs], tmp_path / "run"))
    assert record(tmp_path / "run")["status"] == "failed"
    monkeypatch.setattr(callbacks.LastCheckpoint, "save", original)
    train(compose_config([*common, epochs, "resume=true"], tmp_path / "run"))
    assert_same_weights(weights(tmp_path / "ref"), weights(tmp_path / "run"))


class _Marker:
    """Unpickling this calls Path.touch(path): a checkpoint that would execute code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "genbench_config": _Marker(marker)}, path)
    return path


def test_crafted_checkpoint_executes_nothing(tmp_path, cache_dir):
    marker = tmp_path / "pwned"
    ckpt = crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(UnsafeCheckpoint, match="refusing to load checkpoint .*evil.ckpt"):
        train(
            compose_config(
                ["trainer.accelerator=cpu", "logger=none", "eval=none", f"ckpt_path={ckpt}"], tmp_path / "a"
            )
        )
    assert not marker.exists()
    assert record(tmp_path / "a")["status"] == "failed"
    # genbench.evaluate reads <run>/checkpoints/last.ckpt: the same refusal, one line, exit code 2
    run_dir = tmp_path / "a"
    crafted_checkpoint(run_dir / "checkpoints" / "last.ckpt", marker)
    result = run_genbench(f"run_dir={run_dir}", "eval=fast", cache=cache_dir, module="genbench.evaluate")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "refusing to load checkpoint" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()
    # and the CLI's ckpt_path=
    result = run_genbench(
        "eval=none", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'b'}", cache=cache_dir
    )
    assert result.returncode == 2 and "refusing to load checkpoint" in result.stderr
    assert "Traceback" not in result.stderr and not marker.exists()


def test_nan_loss_stops_the_run_naming_the_term_and_step(tmp_path, cache_dir):
    cfg = compose_config(
        [
            "model=vae",
            "model.lr=1e8",
            "trainer.accelerator=cpu",
            "logger=none",
            "eval=none",
            "divergence.check_every_n_steps=5",
        ],
        tmp_path / "run",
    )
    with pytest.raises(Diverged, match=r"train/\w+=(nan|inf|-inf).* at global step \d+"):
        train(cfg)
    failed = record(tmp_path / "run")
    assert failed["status"] == "failed" and "diverged" in failed["error"]
    assert failed["global_step"] < 22 * 5  # stopped within the first epochs, not at the end
    if (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file():  # any checkpoint kept is a finite one
        state = weights(tmp_path / "run")
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_unwritable_run_and_checkpoint_directories_fail_before_training(tmp_path, cache_dir):
    # as root, permissions do not stop writes: a file where a folder must be does, for root too
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    result = run_genbench("eval=none", f"hydra.run.dir={blocked / 'run'}", cache=cache_dir)
    # Hydra creates the run directory before genbench runs: its own error, naming the path
    assert result.returncode != 0 and str(blocked / "run") in result.stderr
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("not a folder")
    from genbench.run.lifecycle import RunDirUnwritable

    with pytest.raises(RunDirUnwritable, match="cannot write to .*checkpoints"):
        train(compose_config(["trainer.accelerator=cpu", "logger=none", "eval=none"], run_dir))
    with pytest.raises(CheckpointWriteError, match="cannot write checkpoint"):
        AtomicCheckpointIO().save_checkpoint({"x": torch.zeros(1)}, tmp_path / "blocked" / "last.ckpt")


def test_a_user_error_is_one_line_with_exit_code_2(tmp_path):
    result = run_genbench("seed=abc", f"hydra.run.dir={tmp_path / 'run'}", cache=tmp_path / "cache")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("genbench: error:")]
    assert len(lines) == 1 and "seed" in lines[0] and "Traceback" not in result.stderr
    shown = run_genbench(
        "seed=abc", f"hydra.run.dir={tmp_path / 'run2'}", cache=tmp_path / "cache", HYDRA_FULL_ERROR="1"
    )
    assert shown.returncode != 0 and "Traceback" in shown.stderr


def test_a_second_process_cannot_train_in_a_live_run_directory(tmp_path, cache_dir):
    from genbench.run.lock import RunDirInUse, RunLock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with RunLock(run_dir):
        with pytest.raises(RunDirInUse, match="in use by another genbench process"):
            train(compose_config(["trainer.accelerator=cpu", "logger=none", "eval=none"], run_dir))


def test_under_slurm_requeue_sigusr1_is_left_to_lightning():
    """With Lightning's SLURM auto-requeue, genbench must not take SIGUSR1 (Lightning registers its requeue handler
    only where none is set); SIGTERM is genbench's in both cases."""
    from genbench.run.callbacks import Preemption

    before = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)
    guard = Preemption()
    guard.install(slurm_requeue=True)
    try:
        assert signal.getsignal(signal.SIGUSR1) is before[0]
        assert signal.getsignal(signal.SIGTERM) == guard._handle
    finally:
        guard.uninstall()
    guard.install(slurm_requeue=False)
    try:
        assert signal.getsignal(signal.SIGUSR1) == guard._handle
    finally:
        guard.uninstall()
    assert (signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)) == before


def test_divergence_from_the_command_line_is_one_line_and_exit_1(tmp_path):
    overrides = ["model=vae", "model.lr=1e8", "eval=none", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_genbench(*overrides, cache=tmp_path / "cache")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "genbench: error: training diverged" in result.stderr and "Traceback" not in result.stderr
    assert record(tmp_path / "run")["status"] == "failed"


def test_ddp_sigterm_stops_every_rank_at_one_batch_and_resumes_exactly(tmp_path):
    """Two CPU ranks (gloo): SIGTERM to rank 0 mid-epoch stops both ranks at the same batch with a checkpoint
    (Lightning's own handler broadcasts from inside the signal handler and crashed gloo here); resumed, the weights
    equal an uninterrupted 2-rank run's."""
    args = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "model=vae", "eval=none"]
    args += ["trainer.max_epochs=6", "logger=none"]
    assert Run([*args, f"hydra.run.dir={tmp_path / 'ref'}"], tmp_path).finish() == 0
    run_dir = tmp_path / "run"
    run = Run([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    run.wait_for("epoch 3/6")
    time.sleep(0.1)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish(timeout=60) == 143, run.text()[-3000:]
    stopped = record(run_dir)
    assert stopped["status"] == "interrupted" and stopped["checkpoint_global_step"] == stopped["global_step"]
    assert "Traceback" not in run.text()
    resumed = Run([*args, f"hydra.run.dir={run_dir}", "resume=true"], tmp_path)
    assert resumed.finish() == 0, resumed.text()[-3000:]
    assert record(run_dir)["world_size"] == 2
    assert_same_weights(weights(tmp_path / "ref"), weights(run_dir))


def test_a_refused_config_leaves_a_failed_record_in_the_run_directory(tmp_path, cache_dir):
    from genbench.run.validation import ConfigError

    run_dir = tmp_path / "run"
    run_dir.mkdir()  # as Hydra makes it before genbench runs
    with pytest.raises(ConfigError, match="data.image_size=4096"):
        train(compose_config(["data.image_size=4096"], run_dir))
    failed = record(run_dir)
    assert failed["status"] == "failed" and "data.image_size=4096" in failed["error"]


def test_a_refused_start_in_a_finished_run_directory_keeps_its_record(tmp_path, cache_dir):
    """Rerunning a command into a finished run without resume=true (or with a bad value) is refused in one line,
    and the finished run's metrics.json is left as it was (it once became a 'failed' record of the refusal)."""
    from genbench.errors import UserError
    from genbench.run.validation import ConfigError

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"a finished run's checkpoint")
    finished = {"status": "finished", "model": "glo", "data": "digits", "fid_classifier@prior": 4.1}
    (run_dir / "metrics.json").write_text(json.dumps(finished))
    overrides = ["trainer.accelerator=cpu", "logger=none", "eval=none"]
    with pytest.raises(UserError, match="already holds a run.*resume=true"):
        train(compose_config(overrides, run_dir))
    assert record(run_dir) == finished
    with pytest.raises(ConfigError, match="data.image_size=4096"):
        train(compose_config([*overrides, "data.image_size=4096"], run_dir))
    assert record(run_dir) == finished


def test_sigterm_during_the_imle_fit_stops_it_promptly_and_resume_finishes(tmp_path):
    """GLANN's IMLE sampler is fitted at the end of training, inside a hook: SIGTERM there stops the fit within
    seconds (it polls the stop request), exits 143 with the trained weights saved, and resume=true refits and ends."""
    run_dir = tmp_path / "run"
    args = [
        *COMMON, "model=glo", "model/sampler=imle", "model.sampler.epochs=100000", "trainer.max_epochs=1",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    run = Run(args, tmp_path)
    run.wait_for("fitting the imle sampler")
    time.sleep(1.0)
    sent = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish(timeout=60) == 143, run.text()[-3000:]
    assert time.monotonic() - sent < 15, run.text()[-3000:]
    assert record(run_dir)["status"] == "interrupted" and (run_dir / "checkpoints" / "last.ckpt").is_file()
    resumed = Run([*args[:-2], "model.sampler.epochs=2", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}",
                   "resume=true"], tmp_path)  # fmt: skip
    assert resumed.finish() == 0, resumed.text()[-3000:]
    assert record(run_dir)["status"] == "finished"
