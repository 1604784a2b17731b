"""A one-node SLURM stand-in for tests: `sbatch`, `srun`, `sacct` and `scancel` shims on PATH.

Enough of SLURM for hydra-submitit-launcher's SlurmLauncher and Lightning's SLURMEnvironment: sbatch runs the batch
script here (each array element in the background, with the SLURM_* variables a real allocation has) and srun starts
SLURM_NTASKS copies of its command with SLURM_PROCID/SLURM_LOCALID, as a real srun starts one task per DDP rank.
sacct knows no jobs (submitit then waits for the result pickles); scancel does nothing. Install with ``install(bin)``.
"""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

TOOLS = ("sbatch", "srun", "sacct", "scancel")


def install(bin_dir: Path) -> None:
    """Write one shim per tool into bin_dir (put it first on PATH)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        shim = bin_dir / tool
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" {tool} "$@"\n')
        shim.chmod(0o755)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _job_ids(count: int) -> list[int]:
    """Job ids whose Lightning port (15000 + last four digits) is free, distinct in those digits."""
    ids: list[int] = []
    while len(ids) < count:
        job_id = random.randint(100_000, 999_999)
        if all(job_id % 10_000 != i % 10_000 for i in ids) and _port_free(15000 + job_id % 10_000):
            ids.append(job_id)
    return ids


def _fill(pattern: str, env: dict[str, str], task: int | None = None) -> str:
    out = pattern.replace("%A", env.get("SLURM_ARRAY_JOB_ID", "")).replace(
        "%a", env.get("SLURM_ARRAY_TASK_ID", "")
    )
    out = out.replace("%j", env["SLURM_JOB_ID"])
    return out.replace("%t", str(task)) if task is not None else out


def sbatch(args: list[str]) -> None:
    script = args[-1]
    options = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", Path(script).read_text(), re.M))
    if int(options.get("nodes", 1)) != 1:
        raise SystemExit("fake sbatch: one node only")
    ntasks = int(options.get("ntasks-per-node", 1))
    indices: list[int | None] = [None]
    if "array" in options:
        first, last = options["array"].split("%")[0].split("-")
        indices = list(range(int(first), int(last) + 1))
    array_id, *element_ids = _job_ids(len(indices) + 1)
    for index, element_id in zip(indices, element_ids, strict=True):
        env = {
            **os.environ,
            "SLURM_JOB_ID": str(element_id if index is not None else array_id),
            "SLURM_JOB_NAME": options.get("job-name", "fake"),
            "SLURM_NTASKS": str(ntasks),
            "SLURM_NTASKS_PER_NODE": str(ntasks),
            "SLURM_NNODES": "1",
            "SLURM_JOB_NUM_NODES": "1",
            "SLURM_NODELIST": "localhost",
            "SLURM_JOB_NODELIST": "localhost",
        }
        if index is not None:
            env.update(SLURM_ARRAY_JOB_ID=str(array_id), SLURM_ARRAY_TASK_ID=str(index))
        out = Path(_fill(options["output"], env))
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as log:
            subprocess.Popen(
                ["bash", script], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
    print(f"Submitted batch job {array_id}")


def srun(args: list[str]) -> None:
    files: dict[str, str] = {}
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if flag == "--unbuffered":
            continue
        key, value = flag.split("=", 1) if "=" in flag else (flag, args.pop(0))
        files[key] = value
    ntasks = int(os.environ["SLURM_NTASKS"])
    procs = []
    for task in range(ntasks):
        env = {**os.environ, "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task), "SLURM_NODEID": "0"}
        out = open(_fill(files["--output"], env, task), "a") if "--output" in files else None
        err = open(_fill(files["--error"], env, task), "a") if "--error" in files else None
        procs.append(subprocess.Popen(args, env=env, stdout=out, stderr=err))
    sys.exit(max(p.wait() for p in procs))


def sacct(args: list[str]) -> None:
    print("JobID|State|NodeList")


if __name__ == "__main__":
    tool, *rest = sys.argv[1:]
    {"sbatch": sbatch, "srun": srun, "sacct": sacct, "scancel": lambda a: None}[tool](rest)
