"""`python -m genbench`: the Hydra entry point. Heavy imports happen inside the task, so --help stays quick.

Exit codes: 0 finished, 1 failed, 2 a user error (one line, no traceback; HYDRA_FULL_ERROR=1 shows it),
128 + signal when interrupted (143 SIGTERM, 138 SIGUSR1, 130 SIGINT): see ``genbench.run.record``.
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting starve each other on shared or small CPU machines (measured here: a
# training step 20x slower on 2 busy cores). Waiting passively costs little elsewhere. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from genbench.run.paths import CONFIG_DIR  # noqa: E402
from genbench.run.resume import register_resolvers  # noqa: E402

register_resolvers()  # hydra.run.dir / hydra.sweep.dir use them (resume=true)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    from genbench.run.outcome import run_entry
    from genbench.train import train

    run_entry(lambda: train(cfg))


if __name__ == "__main__":
    main()
