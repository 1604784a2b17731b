"""Every sampler for every model: densities fitted to a trained model's codes ("ex-post density estimation").

A sample is ``decode(z)``; what differs between samplers is where z comes from. The model's own sampler (the
prior of a VAE or ALAE, the sampler a GLO was configured with) is always scored. ``eval.samplers`` names more,
each a file of ``conf/model/sampler/`` (gaussian, diagonal, gmm, imle, normal), fitted after training to
``model.training_codes`` (GLO: the learned table; VAE and MMD-VAE: the encoder means of the train split; ALAE: w =
E(x)) and decoded by the model. Metrics of sampler s are keyed ``<metric>@s``, pictures ``samples_<s>.png``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genbench.errors import UserError
from genbench.latent import LatentSampler

log = logging.getLogger(__name__)


class UnknownSampler(UserError, ValueError):
    """``eval.samplers`` names a sampler with no config file."""


@dataclass
class SampleSource:
    """Where an evaluation's samples come from: ``name`` keys the metrics, ``sample(n, generator)`` draws images
    (n, C, H, W) in [0, 1] and ``sample_codes(n, generator)`` the codes they decode (None: not exposed)."""

    name: str
    sample: Callable[[int, torch.Generator | None], Tensor]
    sample_codes: Callable[[int, torch.Generator | None], Tensor] | None = None
    own: bool = True  # the model's own sampler (as opposed to one fitted here after training)
    fit_seconds: float = 0.0


def own_source(model) -> SampleSource:
    """The model's own sampler: ``model.sample``, keyed by ``model.sampler_name``."""
    codes = getattr(model, "sample_codes", None)
    return SampleSource(model.sampler_name, model.sample, codes if callable(codes) else None)


def sampler_config_dir() -> Path:
    from genbench.run.paths import CONFIG_DIR

    return Path(CONFIG_DIR) / "model" / "sampler"


def available_samplers() -> list[str]:
    return sorted(p.stem for p in sampler_config_dir().glob("*.yaml"))


def build_latent_sampler(name: str, latent_dim: int, projection: str, seed: int) -> LatentSampler:
    """The sampler of ``conf/model/sampler/<name>.yaml`` (``${seed}`` resolved to ``seed``), for codes of
    ``latent_dim`` on ``projection``."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = sampler_config_dir() / f"{name}.yaml"
    if not path.is_file():
        raise UnknownSampler(
            f"eval.samplers: no sampler {name!r} (no {path}); choose from {', '.join(available_samplers())}"
        )
    spec = OmegaConf.merge({"seed": seed}, {"spec": OmegaConf.load(path)})
    partial = instantiate(OmegaConf.to_container(spec, resolve=True)["spec"])
    return partial(latent_dim=latent_dim, projection=projection)


def fitted_source(name: str, model, datamodule, seed: int) -> SampleSource:
    """Sampler ``name`` fitted to ``model.training_codes(datamodule)``; its samples are ``model.decode`` of its
    draws. Raises NotImplementedError when the model has no codes to fit to."""
    started = time.perf_counter()
    codes = model.training_codes(datamodule).detach().float()
    latent = build_latent_sampler(name, codes.shape[1], getattr(model, "code_projection", "none"), seed)
    latent = latent.to(codes.device)
    log.info("fitting the %s sampler to %d codes of dim %d", name, len(codes), codes.shape[1])
    with torch.inference_mode(False), torch.enable_grad():  # IMLE trains a network; evaluation holds no_grad
        latent.fit(codes.clone(), generator=torch.Generator(device=codes.device).manual_seed(seed))
    device = next(iter(model.parameters())).device

    def sample_codes(n: int, generator: torch.Generator | None = None) -> Tensor:
        return latent.sample(n, generator).to(device)

    def sample(n: int, generator: torch.Generator | None = None) -> Tensor:
        return model.decode(sample_codes(n, generator))

    return SampleSource(name, sample, sample_codes, own=False, fit_seconds=time.perf_counter() - started)


def sample_sources(
    model, datamodule, names: Sequence[str], seed: int
) -> tuple[list[SampleSource], dict[str, Any]]:
    """The model's own sampler, then each named sampler fitted to its codes (names equal to the model's own, or
    "prior", are the own sampler and not refitted). Returns (sources, {name: reason} of those skipped)."""
    sources, skipped = [own_source(model)], {}
    for name in dict.fromkeys(names):  # in order, once each
        if name in ("prior", sources[0].name):
            continue
        try:
            sources.append(fitted_source(name, model, datamodule, seed))
        except NotImplementedError as err:
            skipped[name] = str(err)
            log.warning("sampler %s skipped: %s", name, err)
    return sources, skipped


__all__ = [
    "SampleSource",
    "UnknownSampler",
    "available_samplers",
    "build_latent_sampler",
    "fitted_source",
    "own_source",
    "sample_sources",
]
