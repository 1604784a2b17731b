"""Code projections and latent samplers that work on any model's codes (pure torch, no Lightning).

A sampler is an ``nn.Module`` whose state (fitted mean, covariance, IMLE mapper) lives in buffers and parameters,
so it is saved with the model that holds it. ``fit(codes)`` learns from codes (N, D); ``sample(n)`` returns (n, D)
codes, projected like the codes they were fitted to (an unprojected draw would leave the region the decoder saw).

- ``NormalSampler``: N(0, I) (the GLO post's first option); nothing to fit.
- ``DiagonalGaussianSampler``: per-dimension mean and variance of the codes (the GLO post).
- ``GaussianSampler``: full-covariance Gaussian fitted to the codes (Bojanowski et al., 2018).
- ``IMLESampler``: GLANN's mapper (Hoshen, Li & Malik, CVPR 2019): an MLP T from noise e (dim 32) to code space,
  trained by implicit maximum likelihood: each epoch draw many e, match every code z_i to its nearest T(e_j) and
  minimise sum_i ||z_i - T(e_nn(i))||^2.

Samplers are built from config as partials (``conf/model/sampler/*.yaml``) completed with the latent size and the
projection by the model that owns them.
"""

from __future__ import annotations

import abc
import logging

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

    def fit(self, codes: Tensor, generator: torch.Generator | None = None) -> None:
        """Learn from codes (N, D). The base sampler has nothing to learn."""
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

    def fit(self, codes: Tensor, generator: torch.Generator | None = None) -> None:
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

    def fit(self, codes: Tensor, generator: torch.Generator | None = None) -> None:
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


# -- IMLE (GLANN) -----------------------------------------------------------------------------------------------------


def nearest_neighbours(queries: Tensor, keys: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """For each query (N, D), the squared distance to and index of its nearest key (M, D). Returns (N,), (N,).

    genbench's one k-NN search (``genbench.metrics.knn.knn``, k = 1): ``chunk`` x ``chunk`` blocks of
    ||q||^2 - 2 q.k + ||k||^2 on the tensors' device, so memory stays at chunk^2 whatever N and M.
    """
    dist, index = knn(queries, keys, 1, chunk, squared=True)
    return dist[:, 0], index[:, 0]


class IMLESampler(LatentSampler):
    """GLANN's IMLE mapper T: noise e (noise_dim) -> code space, x = G(T(e)).

    Per epoch: draw ``draws_per_code`` x N noise vectors, map them, find every code's nearest mapped draw (in
    batches on the device), then one pass of minibatch Adam on ||z_i - T(e_nn(i))||^2 over the codes. GLANN's
    mapper (yedidh/glann icp.py) has two hidden layers of 128 with batch norm, draws 2 per code, Adam 1e-3 with
    betas (0.5, 0.999), batch 128, halves the rate every 50 epochs; this one drops the batch norm so that a draw
    does not depend on the train/eval mode or on the batch it is in.
    """

    name = "imle"

    def __init__(
        self,
        latent_dim: int,
        projection: str = "none",
        noise_dim: int = 32,
        hidden: int = 128,
        epochs: int = 50,
        lr: float = 1e-3,
        batch_size: int = 128,
        draws_per_code: int = 2,
        decay_every: int = 50,
        decay: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__(latent_dim, projection)
        self.noise_dim, self.epochs, self.lr, self.batch_size = noise_dim, epochs, lr, batch_size
        self.draws_per_code, self.seed = draws_per_code, seed
        self.decay_every, self.decay = decay_every, decay
        self.mapper = nn.Sequential(
            nn.Linear(noise_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, latent_dim),
        )

    def draw(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.mapper(_noise(n, self.noise_dim, generator, self.device))

    def _mapped(self, noise: Tensor, chunk: int = 65536) -> Tensor:
        """Projected T(e) for many noise vectors (M, noise_dim), without building a graph."""
        with torch.no_grad():
            return torch.cat([project(self.mapper(e), self.projection) for e in noise.split(chunk)])

    def matching_loss(self, codes: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The IMLE objective on fresh draws: mean_i min_j ||z_i - T(e_j)||^2, with draws_per_code x N draws."""
        noise = _noise(self.draws_per_code * codes.shape[0], self.noise_dim, generator, self.device)
        return nearest_neighbours(codes.detach().to(self.device), self._mapped(noise))[0].mean()

    def fit(self, codes: Tensor, generator: torch.Generator | None = None) -> None:
        codes = codes.detach().to(self.device).float()  # (N, D)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(self.seed)
        n = codes.shape[0]
        batch = min(self.batch_size, n)
        with torch.inference_mode(False), torch.enable_grad():
            was_training = self.mapper.training
            self.mapper.train()
            for epoch in range(self.epochs):
                lr = self.lr * self.decay ** (epoch // self.decay_every) if self.decay_every else self.lr
                # A fresh optimiser each epoch, as in GLANN (its moments would be stale after the new matching).
                opt = torch.optim.Adam(self.mapper.parameters(), lr=lr, betas=(0.5, 0.999))
                noise = _noise(self.draws_per_code * n, self.noise_dim, generator, self.device)  # (M, e)
                dist, match = nearest_neighbours(codes, self._mapped(noise))
                matched = noise[match]  # (N, e): each code's nearest draw
                order = torch.randperm(n, generator=generator, device=generator.device).to(self.device)
                for start in range(0, n - batch + 1, batch):
                    i = order[start : start + batch]
                    loss = (
                        (codes[i] - project(self.mapper(matched[i]), self.projection))
                        .pow(2)
                        .sum(dim=1)
                        .mean()
                    )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                if epoch == 0 or (epoch + 1) % 10 == 0 or epoch + 1 == self.epochs:
                    log.info(
                        "imle epoch %d/%d: matching loss %.4g", epoch + 1, self.epochs, float(dist.mean())
                    )
            self.mapper.train(was_training)
        self.fitted.fill_(True)


__all__ = [
    "PROJECTIONS",
    "DiagonalGaussianSampler",
    "GaussianSampler",
    "IMLESampler",
    "LatentSampler",
    "NormalSampler",
    "nearest_neighbours",
    "project",
]
