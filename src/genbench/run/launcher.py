"""DDP ranks on one node, started by genbench instead of by Lightning re-running the command line.

Lightning's DDP launcher (``_SubprocessScriptLauncher``) starts local ranks 1..N-1 by re-executing ``sys.argv``, with
``hydra.run.dir`` pinned when Hydra is active. That is right for a single run and wrong for a multirun (measured with
Lightning 2.6.6, Hydra 1.3.8): under the basic launcher rank 1 re-runs the whole ``-m`` sweep in lock-step with rank 0
and writes a second multirun folder; under the joblib launcher the re-executed loky worker exits (``--pipe`` missing)
and the job is killed; under submitit it would re-run ``submitit.core._submit``.

So when Lightning would start the ranks itself, genbench starts them instead: ``python -m genbench.run.worker CONFIG``
with the run's resolved config (no Hydra, no sweep) and ``MASTER_ADDR``/``MASTER_PORT``/``NODE_RANK``/``WORLD_SIZE``/
``LOCAL_RANK``/``RANK`` in its environment, and marks this process as local rank 0 (``LOCAL_RANK=0``), so Lightning's
``LightningEnvironment`` sees every rank as started externally. Where the cluster starts the ranks (srun under SLURM,
torchrun), Lightning detects it (``SLURMEnvironment``, ``TorchElasticEnvironment``) and nothing is started here.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments.lightning import find_free_network_port
from omegaconf import OmegaConf
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher

log = logging.getLogger(__name__)

# What this module sets in the rank-0 process for the duration of one run (restored afterwards: the basic launcher
# runs every job of a sweep in one process, and a left-over LOCAL_RANK would make the next job start no workers).
_ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched_as_global_zero() -> bool:
    """Whether this process is global rank 0, from what its launcher set (readable before Lightning starts).

    ``RANK``: torchrun and genbench's own workers; ``SLURM_PROCID``: srun; otherwise ``NODE_RANK``/``LOCAL_RANK``
    (Lightning's convention for clusters without a scheduler); a plain process is rank 0.
    """
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name]) == 0
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


def lightning_would_reexecute(trainer: pl.Trainer) -> bool:
    """Whether ``trainer.fit`` would start this node's other ranks by re-running the command line."""
    launcher = trainer.strategy.launcher
    return (
        isinstance(launcher, _SubprocessScriptLauncher)
        and not launcher.cluster_environment.creates_processes_externally
    )


def strategy_for(strategy: Any, model: pl.LightningModule) -> Any:
    """The Lightning strategy to use for ``model``: ``ddp`` becomes ``ddp_find_unused_parameters_true`` for a
    manual-optimisation model. Such models (GLO, ALAE) may call ``manual_backward`` on a different subset of their
    parameters per optimiser, which plain DDP rejects ("parameters that were not used in producing the loss")."""
    if strategy == "ddp" and not model.automatic_optimization:
        return "ddp_find_unused_parameters_true"
    return strategy


def local_ranks(
    trainer: pl.Trainer, config: dict[str, Any], on_failure: Callable[[int, int], None] | None = None
) -> AbstractContextManager[Any]:
    """Around ``fit``: this node's other ranks as ``genbench.run.worker`` processes where Lightning would re-execute."""
    if not lightning_would_reexecute(trainer):
        return nullcontext()
    return LocalRanks(
        config, num_devices=trainer.num_devices, num_nodes=trainer.num_nodes, on_failure=on_failure
    )


class WorkerFailed(RuntimeError):
    """A DDP worker rank exited with a non-zero code."""


class LocalRanks:
    """Context manager: starts local ranks 1..N-1 of this node; this process is local rank 0.

    On a normal exit it waits for the workers and raises :class:`WorkerFailed` if one failed. On an exception it stops
    them. While they run, a watcher thread calls ``on_failure(rank, code)`` as soon as one fails; the default ends this
    process, as Lightning's own launcher does, because rank 0 may be blocked in a collective that cannot time out soon.
    """

    def __init__(
        self,
        config: dict[str, Any],
        num_devices: int,
        num_nodes: int = 1,
        on_failure: Callable[[int, int], None] | None = None,
        exit_timeout_s: float = 300.0,
    ) -> None:
        self.config = config
        self.num_devices = num_devices
        self.num_nodes = num_nodes
        self.on_failure = on_failure or kill_this_process
        self.exit_timeout_s = exit_timeout_s
        self.procs: dict[int, subprocess.Popen] = {}  # global rank -> worker
        self._saved_env: dict[str, str | None] = {}
        self._config_file: Path | None = None
        self._done = threading.Event()
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> LocalRanks:
        self._saved_env = {key: os.environ.get(key) for key in _ENV_KEYS}
        node_rank = int(os.environ.get("NODE_RANK", 0))
        os.environ.update(
            MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"),
            MASTER_PORT=os.environ.get("MASTER_PORT") or str(find_free_network_port()),
            NODE_RANK=str(node_rank),
            WORLD_SIZE=str(self.num_devices * self.num_nodes),
            LOCAL_RANK="0",
        )
        # a private copy of the resolved config: rank 0 of another node may not have written <run_dir>/config.yaml
        fd, name = tempfile.mkstemp(prefix="genbench-ranks-", suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            f.write(OmegaConf.to_yaml(OmegaConf.create(self.config)))
        self._config_file = Path(name)
        try:
            for local_rank in range(1, self.num_devices):
                rank = node_rank * self.num_devices + local_rank
                env = {**os.environ, "LOCAL_RANK": str(local_rank), "RANK": str(rank)}
                command = [sys.executable, "-m", "genbench.run.worker", str(self._config_file)]
                self.procs[rank] = subprocess.Popen(command, env=env)
        except BaseException:
            self._stop_workers()
            self._cleanup()
            raise
        log.info(
            "started DDP ranks %s on port %s: %s",
            sorted(self.procs),
            os.environ["MASTER_PORT"],
            " ".join(command),
        )
        self._watcher = threading.Thread(target=self._watch, name="genbench-rank-watcher", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._done.set()
        try:
            if exc_type is not None:
                self._stop_workers()
                return
            failed = {}
            for rank, proc in self.procs.items():
                try:
                    code = proc.wait(timeout=self.exit_timeout_s)
                except subprocess.TimeoutExpired:
                    code = None
                if code != 0:
                    failed[rank] = code
            if failed:
                self._stop_workers()
                raise WorkerFailed(
                    f"DDP worker ranks exited with codes {failed} (None: still running, stopped)"
                )
        finally:
            self._cleanup()

    def _watch(self) -> None:
        while not self._done.wait(1.0):
            for rank, proc in self.procs.items():
                code = proc.poll()
                if code is not None and code != 0 and not self._done.is_set():
                    log.error("DDP worker rank %d exited with code %d; stopping the run", rank, code)
                    self._stop_workers()
                    self.on_failure(rank, code)
                    return

    def _stop_workers(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _cleanup(self) -> None:
        # the next run in this process must create its own process group with its own workers and port
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._config_file is not None:
            self._config_file.unlink(missing_ok=True)


def kill_this_process(rank: int, code: int) -> None:
    """The default reaction to a failed worker: SIGKILL, as Lightning's launcher does (a blocked collective ignores
    signals that Python would handle)."""
    os.kill(os.getpid(), signal.SIGKILL)
