"""Code projections and latent samplers that work on any model's codes (pure torch, no Lightning).

A sampler is an ``nn.Module`` whose state (fitted mean, covariance, mixture, IMLE mapper) lives in buffers and
parameters, so it is saved with the model that holds it and a fitted sampler restores from a checkpoint exactly.
``fit(codes)`` learns from codes (N, D) of any model (GLO's table, a VAE's encoder means, ALAE's W); ``sample(n)``
returns (n, D) codes, projected like the codes they were fitted to (an unprojected draw would leave the region the
decoder saw). "Ex-post density estimation": the sampler is fitted after training, apart from the model.

- ``NormalSampler``: N(0, I) (the GLO post's first option); nothing to fit.
- ``DiagonalGaussianSampler``: per-dimension mean and variance of the codes (the GLO post).
- ``GaussianSampler``: full-covariance Gaussian fitted to the codes (Bojanowski et al., 2018).
- ``GaussianMixtureSampler`` (``genbench.gmm``): k full or diagonal Gaussians fitted by batched EM.
- ``IMLESampler`` (``genbench.imle``): GLANN's mapper from noise to codes, trained by implicit maximum likelihood.

A long fit (IMLE, the mixture) polls ``should_stop()`` and raises :class:`SamplerFitInterrupted` when it returns
True, leaving the sampler unfitted, so a caller can checkpoint and exit with 128 + the signal.

Samplers are built from config as partials (``conf/model/sampler/*.yaml``) completed with the latent size and the
projection by the model that owns them.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable

import torch
from torch import Tensor, nn

from genbench.metrics.knn import knn

log = logging.getLogger(__name__)

PROJECTIONS = ("sphere", "ball", "none")


def project(z: Tensor, kind: str) -> Tensor:
    """Project codes (N, D): ``sphere`` z/||z||, ``ball`` only codes outside the unit ball, ``none`` unchanged."""
    if kind == "none":
        return z
    norm = z.norm(dim=1, keepdim=True)
    if kind == "sphere":
        return z / norm.clamp_min(1e-12)
    if kind == "ball":
        return z / norm.clamp_min(1.0)
    raise ValueError(f"unknown projection {kind!r}; choose one of {PROJECTIONS}")


def _noise(n: int, dim: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """(n, dim) standard normal draws from ``generator`` (on its device), moved to ``device``."""
    where = generator.device if generator is not None else device
    return torch.randn(n, dim, generator=generator, device=where).to(device)


class SamplerFitInterrupted(Exception):
    """A fit stopped because ``should_stop()`` returned True; the sampler is left unfitted."""


StopCheck = Callable[[], bool] | None


class LatentSampler(nn.Module, abc.ABC):
    """Base: ``fit(codes)`` then ``sample(n, generator)``. ``fitted`` is a buffer so checkpoints carry it."""

    name = "base"

    def __init__(self, latent_dim: int, projection: str = "none") -> None:
        super().__init__()
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        self.latent_dim, self.projection = latent_dim, projection
        self.register_buffer("fitted", torch.tensor(False))

    @property
    def device(self) -> torch.device:
        return self.fitted.device

    def fit(
        self, codes: Tensor, generator: torch.Generator | None = None, should_stop: StopCheck = None
    ) -> None:
        """Learn from codes (N, D). The base sampler has nothing to learn. A fit that takes long polls
        ``should_stop`` and raises :class:`SamplerFitInterrupted` when it returns True."""
        self.fitted.fill_(True)

    @abc.abstractmethod
    def draw(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, D) codes before projection."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, D) codes on the sampler's device, projected like the training codes."""
        if not bool(self.fitted):
            raise RuntimeError(f"the {self.name} sampler has not been fitted; call fit(codes) first")
        return project(self.draw(n, generator), self.projection)


class NormalSampler(LatentSampler):
    """N(0, I), projected: uniform on the sphere for ``sphere`` codes."""

    name = "normal"

    def __init__(self, latent_dim: int, projection: str = "none") -> None:
        super().__init__(latent_dim, projection)
        self.fitted.fill_(True)

    def draw(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return _noise(n, self.latent_dim, generator, self.device)


class DiagonalGaussianSampler(LatentSampler):
    """N(mean, diag(std^2)) with the codes' per-dimension mean and (unbiased) standard deviation."""

    name = "diagonal"

    def __init__(self, latent_dim: int, projection: str = "none") -> None:
        super().__init__(latent_dim, projection)
        self.register_buffer("mean", torch.zeros(latent_dim))
        self.register_buffer("std", torch.ones(latent_dim))

    def fit(
        self, codes: Tensor, generator: torch.Generator | None = None, should_stop: StopCheck = None
    ) -> None:
        codes = codes.detach().double()
        self.mean.copy_(codes.mean(dim=0))
        self.std.copy_(codes.std(dim=0))
        self.fitted.fill_(True)

    def draw(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.mean + self.std * _noise(n, self.latent_dim, generator, self.device)


class GaussianSampler(LatentSampler):
    """N(mean, cov) with the codes' mean and full (unbiased) covariance; draws use its Cholesky factor."""

    name = "gaussian"

    def __init__(self, latent_dim: int, projection: str = "none", jitter: float = 1e-6) -> None:
        super().__init__(latent_dim, projection)
        self.jitter = jitter
        self.register_buffer("mean", torch.zeros(latent_dim))
        self.register_buffer("cov", torch.eye(latent_dim))
        self.register_buffer("scale_tril", torch.eye(latent_dim))

    def fit(
        self, codes: Tensor, generator: torch.Generator | None = None, should_stop: StopCheck = None
    ) -> None:
        codes = codes.detach().double()  # (N, D); float64 so the Cholesky of a near-singular cov is stable
        mean = codes.mean(dim=0)
        centred = codes - mean
        cov = centred.T @ centred / max(codes.shape[0] - 1, 1)
        # Codes on the sphere have a rank-deficient direction at most; a jitter relative to the scale keeps it PD.
        eye = torch.eye(self.latent_dim, dtype=cov.dtype, device=cov.device)
        scale_tril = torch.linalg.cholesky(cov + self.jitter * cov.diagonal().mean().clamp_min(1e-12) * eye)
        self.mean.copy_(mean)
        self.cov.copy_(cov)
        self.scale_tril.copy_(scale_tril)
        self.fitted.fill_(True)

    def draw(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.mean + _noise(n, self.latent_dim, generator, self.device) @ self.scale_tril.T


# -- nearest neighbours (IMLE matching, code inversion) ---------------------------------------------------------------


def nearest_neighbours(queries: Tensor, keys: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """For each query (N, D), the squared distance to and index of its nearest key (M, D). Returns (N,), (N,).

    genbench's one k-NN search (``genbench.metrics.knn.knn``, k = 1): ``chunk`` x ``chunk`` blocks of
    ||q||^2 - 2 q.k + ||k||^2 on the tensors' device, so memory stays at chunk^2 whatever N and M.
    """
    dist, index = knn(queries, keys, 1, chunk, squared=True)
    return dist[:, 0], index[:, 0]


def __getattr__(name: str):
    """The samplers with modules of their own, importable from here too (lazily: they import this module)."""
    if name == "IMLESampler":
        from genbench.imle import IMLESampler

        return IMLESampler
    if name == "GaussianMixtureSampler":
        from genbench.gmm import GaussianMixtureSampler

        return GaussianMixtureSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PROJECTIONS",
    "DiagonalGaussianSampler",
    "GaussianSampler",
    "LatentSampler",
    "NormalSampler",
    "SamplerFitInterrupted",
    "StopCheck",
    "nearest_neighbours",
    "project",
]
