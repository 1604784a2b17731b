"""Sweeps and DDP: every job of a multirun trains once, on its N ranks, into one run directory.

Lightning's own DDP launcher re-executes the command line; under a Hydra multirun that re-runs the whole sweep (basic
launcher) or dies (joblib). genbench starts the extra ranks itself (genbench.run.launcher), and these tests hold it to
"one job = one run directory = one metrics.json with world_size N", with the basic, joblib and submitit launchers.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import fake_slurm
from genbench.leaderboard.published import load_published
from genbench.run.launcher import LocalRanks, WorkerFailed
from helpers import compose_config, run_genbench

REPO = Path(__file__).resolve().parents[1]
MODELS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
TINY = ["trainer.max_epochs=1", "eval=none", "logger=none"]
# The jobs of the sweeps in experiments/*.md that reproduce published columns: (overrides, model, sampler, data).
TABLE_JOBS = [
    *[
        ([f"experiment=lucic_vae_{data}"], "vae", "prior", data)
        for data in ("mnist", "fashion_mnist", "celeba")
    ],
    *[
        pytest.param(
            ["experiment=glann_mnist_glo", f"data={data}", f"model/sampler={sampler}"],
            "glo",
            sampler,
            data,
        )
        for data in ("mnist", "fashion_mnist", "celeba")
        for sampler in ("gaussian", "imle")
    ],
]
DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]


def genbench(
    *overrides: str, cwd: Path, timeout: int = 400, path: Path | None = None
) -> subprocess.CompletedProcess:
    extra = {"PATH": f"{path}{os.pathsep}{os.environ['PATH']}"} if path is not None else {}
    result = run_genbench(*overrides, cache=cwd / "cache", cwd=cwd, timeout=timeout, **extra)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def run_dirs(root: Path) -> list[Path]:
    """Folders under root that a job wrote into (config.yaml or metrics.json), sorted."""
    found = {
        p.parent
        for name in ("config.yaml", "metrics.json")
        for p in root.rglob(name)
        if ".hydra" not in p.parts
    }
    return sorted(found)


def only_sweep(cwd: Path) -> Path:
    sweeps = [p for p in (cwd / "multirun").iterdir() if not p.name.startswith(".")]  # .resume-<time> markers
    assert len(sweeps) == 1, f"expected one multirun folder, found {sweeps}"
    assert not (cwd / "outputs").exists()
    return sweeps[0]


def assert_one_run_per_seed(cwd: Path, seeds: list[int], world_size: int) -> list[dict]:
    sweep = only_sweep(cwd)
    dirs = run_dirs(cwd)
    assert len(dirs) == len(seeds), dirs
    records = [json.loads((d / "metrics.json").read_text()) for d in dirs]
    assert all(d.parent == sweep for d in dirs)
    assert [r["seed"] for r in records] == seeds
    for r in records:
        assert r["status"] == "finished" and r["world_size"] == world_size and r["epochs"] == 1
    return records


def test_ddp_sweep_trains_each_job_once(tmp_path):
    """The fast DDP smoke test: -m seed=0,1 with 2 CPU ranks (gloo) -> 2 run dirs, each trained by 2 ranks once."""
    result = genbench("-m", "seed=0,1", *DDP, *TINY, cwd=tmp_path)
    assert_one_run_per_seed(tmp_path, [0, 1], world_size=2)
    out = result.stdout + result.stderr
    assert out.count("Launching 2 jobs locally") == 1  # no rank re-ran the sweep
    assert out.count("started DDP ranks [1]") == 2  # one worker per job
    assert out.count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2


def test_joblib_sweep_runs_jobs_in_parallel(tmp_path):
    genbench("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", *TINY, cwd=tmp_path)
    assert_one_run_per_seed(tmp_path, [0, 1], world_size=1)


def test_submitit_local_sweep(tmp_path):
    """The submitit path for real, on this machine: each job runs in its own submitit-managed process."""
    genbench(
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "seed=0,1",
        *TINY,
        cwd=tmp_path,
    )
    assert_one_run_per_seed(tmp_path, [0, 1], world_size=1)
    logs = list((only_sweep(tmp_path) / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_ddp_sweep_with_parallel_launchers(tmp_path, launcher):
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else ["hydra.launcher.timeout_min=10"]
    genbench("-m", f"hydra/launcher={launcher}", *extra, "seed=0,1", *DDP, *TINY, cwd=tmp_path)
    assert_one_run_per_seed(tmp_path, [0, 1], world_size=2)


@pytest.mark.slow
def test_slurm_sweep_ranks_started_by_srun(tmp_path):
    """hydra/launcher=slurm end to end on a one-node SLURM stand-in (tests/fake_slurm.py): srun starts 2 tasks per job,
    Lightning's SLURMEnvironment makes them the DDP ranks, and genbench starts no ranks of its own."""
    fake_slurm.install(tmp_path / "bin")
    genbench(
        "-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "seed=0,1", *DDP, *TINY,
        cwd=tmp_path, path=tmp_path / "bin",
    )  # fmt: skip
    assert_one_run_per_seed(tmp_path, [0, 1], world_size=2)
    task_logs = sorted((only_sweep(tmp_path) / ".submitit").rglob("*_[01]_log.out"))
    assert len(task_logs) == 4  # 2 jobs x 2 srun tasks: <array>_<job>_<task>_log.out
    for log in task_logs:
        rank = int(log.name.split("_")[-2])
        text = log.read_text() + log.with_name(log.name.replace(".out", ".err")).read_text()
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in text
        assert "started DDP ranks" not in text


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_ddp_single_run_per_model(tmp_path, model):
    """Every model trains under DDP (2 CPU ranks) into one run directory with one metrics.json."""
    run_dir = tmp_path / "run"
    genbench(f"model={model}", *DDP, *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert run_dirs(tmp_path) == [run_dir]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["world_size"] == 2 and metrics["model"] == model


def test_failed_worker_is_reported_and_environment_restored(tmp_path):
    """A worker that dies is noticed while rank 0 runs and fails the run; the DDP variables are put back."""
    assert "LOCAL_RANK" not in os.environ
    failures: list[tuple[int, int]] = []
    with pytest.raises(WorkerFailed, match="codes {1: 1}"):
        with LocalRanks({"not": "a run config"}, num_devices=2, on_failure=lambda *a: failures.append(a)):
            assert os.environ["LOCAL_RANK"] == "0" and os.environ["WORLD_SIZE"] == "2"
            deadline = time.monotonic() + 120
            while not failures and time.monotonic() < deadline:
                time.sleep(0.2)
    assert failures == [(1, 1)]
    assert "LOCAL_RANK" not in os.environ and "WORLD_SIZE" not in os.environ


@pytest.mark.parametrize(("overrides", "model", "sampler", "data"), TABLE_JOBS)
def test_published_table_jobs_compose(tmp_path, overrides, model, sampler, data):
    """Each job of the documented sweeps composes to the model, sampler and data of a published number."""
    cfg = compose_config(overrides, tmp_path)
    built = hydra.utils.instantiate(cfg.model)
    assert (cfg.model_name, built.sampler_name, cfg.data.name) == (model, sampler, data)
    assert cfg.data.image_size == (64 if data == "celeba" else 28)
    published = {
        (r.model, r.sampler, r.data) for r in load_published(REPO / "experiments" / "published.yaml")
    }
    assert (model, sampler, data) in published
    for doc in ("lucic2018_vae.md", "hoshen2019_glo_glann.md"):
        assert (REPO / "experiments" / doc).is_file()


def test_slurm_launcher_is_sized_from_the_trainer():
    """hydra/launcher=slurm asks SLURM for one task and one GPU per device, trainer.num_nodes nodes, a time limit."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "hydra/launcher=slurm",
                "trainer.devices=4",
                "trainer.num_nodes=2",
                "hydra.launcher.timeout_min=90",
            ],
            return_hydra_config=True,
        )
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)
    params = launcher.params
    assert type(launcher).__name__ == "SlurmLauncher"
    assert (params["gpus_per_node"], params["tasks_per_node"], params["nodes"], params["timeout_min"]) == (
        4,
        4,
        2,
        90,
    )


def test_a_sweep_run_again_with_resume_true_continues_in_its_own_folders(tmp_path):
    """resume=true on a sweep finds the sweep folder of the same overrides and each job its own run directory: a job
    interrupted by SIGTERM continues from its checkpoint, a finished one is left as it is, no new folder appears."""
    genbench("-m", "seed=0,1", *TINY, cwd=tmp_path)
    sweep = only_sweep(tmp_path)
    dirs = run_dirs(tmp_path)
    finished = (dirs[0] / "metrics.json").read_text()
    # job 1's record marked interrupted (tests/test_lifecycle.py interrupts real runs mid-epoch)
    interrupted = json.loads((dirs[1] / "metrics.json").read_text())
    (dirs[1] / "metrics.json").write_text(json.dumps({**interrupted, "status": "interrupted"}))
    result = genbench("-m", "seed=0,1", *TINY, "resume=true", cwd=tmp_path)
    assert only_sweep(tmp_path) == sweep and run_dirs(tmp_path) == dirs
    assert (dirs[0] / "metrics.json").read_text() == finished
    assert "already finished; nothing to do" in result.stdout + result.stderr
    assert json.loads((dirs[1] / "metrics.json").read_text())["status"] == "finished"
