"""`python -m genbench`: the Hydra entry point. Heavy imports happen inside the task, so --help stays quick."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    from genbench.train import train

    train(cfg)


if __name__ == "__main__":
    main()
