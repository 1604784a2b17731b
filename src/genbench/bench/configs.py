"""What the benchmark runs: every ``conf/model/*.yaml``, composed with the real config tree, on images of the right
shape. Synthetic uint8 images by default, so the benchmark runs anywhere; the real datasets with ``data_root``."""

from __future__ import annotations

import functools
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from genbench.data import ImageArrays, ImageDataModule
from genbench.data.sources import ImageSource
from genbench.interface import GenerativeModel
from genbench.run.paths import CONFIG_DIR
from genbench.run.resume import register_resolvers

CONF = CONFIG_DIR
# Image side -> the data config whose shape it stands for: MNIST 1x28x28, CelebA 3x64x64.
DATASETS = {28: "mnist", 64: "celeba"}


def model_names(conf: Path = CONF) -> list[str]:
    """Every model config, ``conf/model/*.yaml``: a new model is benchmarked without touching this code."""
    return sorted(p.stem for p in (conf / "model").glob("*.yaml"))


def compose_run(overrides: list[str], run_dir: Path) -> DictConfig:
    """The run config ``python -m genbench <overrides>`` would compose, with Hydra's runtime fields resolved."""
    GlobalHydra.instance().clear()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"run_dir={run_dir}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.choices.model} and friends
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def bench_overrides(model: str | None, size: int, batch_size: int, data_root: str | None) -> list[str]:
    """Overrides for one (model, image size) cell: no evaluation, CSV logging as a default run, the bench's batch size, the real data root.
    ``model`` None keeps the default model (for cells that only need the data). preset=none: the bench measures
    conf/model/<model>.yaml itself, not a paper's per-dataset setting."""
    if size not in DATASETS:
        raise ValueError(f"image size {size} is not benchmarked; choose from {sorted(DATASETS)}")
    out = [
        f"data={DATASETS[size]}",
        "preset=none",
        "eval=none",
        "logger=csv",
        f"data.batch_size={batch_size}",
    ]
    out += [f"model={model}"] if model else []
    return out + ([f"data.root={data_root}"] if data_root else [])


class SyntheticSource(ImageSource):
    """Seeded uniform-random uint8 images (and labels 0..9) of any shape: speed does not depend on the pixels."""

    name = "synthetic"
    has_labels = True

    def __init__(
        self,
        root: str | None,
        image_size: int,
        download: bool = False,
        channels: int = 1,
        n_train: int = 1024,
        n_test: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(root, image_size, download)
        self.channels, self.n_train, self.n_test, self.seed = channels, n_train, n_test, seed

    def load(self, split: str) -> ImageArrays:
        n = self.n_train if split == "train" else self.n_test
        generator = torch.Generator().manual_seed(self.seed * 2 + (split == "test"))
        shape = (n, self.channels, self.image_size, self.image_size)
        images = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)  # (N, C, S, S)
        return ImageArrays(images, torch.randint(0, 10, (n,), generator=generator))

    def fingerprint(self, split: str) -> str:
        n = self.n_train if split == "train" else self.n_test
        return f"synthetic:{split}:{self.channels}x{self.image_size}:{n}:{self.seed}"


def build_datamodule(
    cfg: DictConfig, device_resident: bool, synthetic_train: int | None, cache_dir: Path
) -> ImageDataModule:
    """The run's datamodule; ``synthetic_train`` images (None: the real data) with the config's shape."""
    spec = OmegaConf.to_container(cfg.data, resolve=True)
    spec["device_resident"] = device_resident
    if synthetic_train is not None:
        spec["source"] = functools.partial(
            SyntheticSource,
            channels=spec["channels"],
            n_train=synthetic_train,
            n_test=spec["eval_batch_size"],
        )
        spec["cache_dir"] = str(cache_dir)  # never the user's cache: these images are throwaway
    datamodule = hydra.utils.instantiate(spec)
    if not isinstance(datamodule, ImageDataModule):
        raise TypeError(f"the benchmark serves data through ImageDataModule, got {type(datamodule).__name__}")
    return datamodule


def build_model(cfg: DictConfig) -> GenerativeModel:
    model = hydra.utils.instantiate(cfg.model)
    if not isinstance(model, GenerativeModel):
        raise TypeError(f"{type(model).__name__} does not implement genbench.interface.GenerativeModel")
    return model
