"""`python -m genbench`: the Hydra entry point. Heavy imports happen inside the task, so --help stays quick."""

from __future__ import annotations

import os
from pathlib import Path

# OpenMP threads that spin while waiting starve each other on shared or small CPU machines (measured here: a
# training step 20x slower on 2 busy cores). Waiting passively costs little elsewhere. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from genbench.run.paths import CONFIG_DIR  # noqa: E402



@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    from genbench.train import train

    train(cfg)


if __name__ == "__main__":
    main()
