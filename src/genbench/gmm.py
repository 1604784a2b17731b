"""A Gaussian-mixture sampler fitted to any model's codes by batched EM on the codes' device.

The "ex-post density estimation" of Ghosh et al. (2020, RAE) and pythae's GMM sampler: a mixture of ``components``
Gaussians, full or diagonal covariance, is fitted to the codes after training, and samples are decoded draws from
it. EM runs in float64 over chunks of codes (memory: one chunk x components block), seeded by k-means++ (or
random codes) drawn with a generator, so a fit is reproducible. Each covariance gets ``reg_covar`` times the codes'
mean variance added to its diagonal, so a component with few or coplanar codes stays positive definite.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from genbench.ivf import kmeans_plus_plus
from genbench.latent import LatentSampler, SamplerFitInterrupted, StopCheck, _noise

log = logging.getLogger(__name__)

COVARIANCES = ("full", "diagonal")
INITS = ("kmeans++", "random")


class GaussianMixtureSampler(LatentSampler):
    """sum_k w_k N(mean_k, cov_k) fitted by EM, stopped when the mean log-likelihood per code gains less than
    ``tol`` (scikit-learn's rule and default) or after ``iterations``. Buffers: ``weights`` (K,), ``means`` (K, D) and ``scales``: the
    Cholesky factors (K, D, D) of the covariances (``full``) or the standard deviations (K, D) (``diagonal``).
    ``history`` holds the mean log-likelihood per code at every EM iteration of the last fit (non-decreasing)."""

    name = "gmm"

    def __init__(
        self,
        latent_dim: int,
        projection: str = "none",
        components: int = 10,
        covariance: str = "full",
        iterations: int = 50,
        tol: float = 1e-3,
        reg_covar: float = 1e-4,
        init: str = "kmeans++",
        chunk_size: int = 8192,
        seed: int = 0,
    ) -> None:
        super().__init__(latent_dim, projection)
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if components < 1 or iterations < 0 or chunk_size < 1 or reg_covar < 0:
            raise ValueError("components and chunk_size must be >= 1, iterations and reg_covar >= 0")
        self.components, self.covariance, self.iterations, self.tol = components, covariance, iterations, tol
        self.reg_covar, self.init, self.chunk_size, self.seed = reg_covar, init, chunk_size, seed
        self.history: list[float] = []
        k, d = components, latent_dim
        self.register_buffer("weights", torch.full((k,), 1.0 / k))
        self.register_buffer("means", torch.zeros(k, d))
        scales = torch.eye(d).expand(k, d, d).clone() if covariance == "full" else torch.ones(k, d)
        self.register_buffer("scales", scales)

    # -- EM ---------------------------------------------------------------------------------------------------------
    def _log_joint(self, x: Tensor, weights: Tensor, means: Tensor, scales: Tensor) -> Tensor:
        """log w_k + log N(x | mean_k, cov_k) for a chunk x (n, D): (n, K), in x's dtype.

        The parameters come in float64; the (n, K, D) work runs in x's dtype (float32: a quarter of the float64
        time on a CPU), the log-determinants and whitening matrices are formed in float64 first."""
        d, dtype = x.shape[1], x.dtype
        if self.covariance == "full":
            # ||L_k^-1 (x - mean_k)||^2 = ||x P_k - mean_k P_k||^2 with P_k = L_k^-T: batched matrix products
            whiten = torch.linalg.solve_triangular(
                scales, torch.eye(d, dtype=scales.dtype, device=scales.device).expand_as(scales), upper=False
            ).transpose(1, 2)  # (K, D, D)
            shift = (means[:, None, :] @ whiten)[:, 0]  # (K, D)
            white = x[None] @ whiten.to(dtype) - shift.to(dtype)[:, None, :]  # (K, n, D)
            mahalanobis = white.pow(2).sum(dim=2).T  # (n, K)
            log_det = 2 * scales.diagonal(dim1=1, dim2=2).log().sum(dim=1)  # (K,)
        else:
            inv_var = scales.pow(-2)  # (K, D)
            mahalanobis = (
                x.pow(2) @ inv_var.T.to(dtype)
                - 2 * x @ (means * inv_var).T.to(dtype)
                + (means.pow(2) * inv_var).sum(dim=1).to(dtype)
            )
            log_det = 2 * scales.log().sum(dim=1)
        const = (weights.log() - 0.5 * (d * math.log(2 * math.pi) + log_det)).to(dtype)
        return const - 0.5 * mahalanobis

    def _e_step(self, codes: Tensor, params: tuple[Tensor, Tensor, Tensor]):
        """Mean log-likelihood under ``params`` and the responsibilities' sufficient statistics (float64 sums of
        chunk results)."""
        k, d = self.components, codes.shape[1]
        f64 = {"dtype": torch.float64, "device": codes.device}
        counts, first = torch.zeros(k, **f64), torch.zeros(k, d, **f64)
        second = torch.zeros(k, d, d, **f64) if self.covariance == "full" else torch.zeros(k, d, **f64)
        total = torch.zeros((), **f64)
        for x in codes.split(self.chunk_size):
            log_joint = self._log_joint(x, *params)  # (n, K)
            log_norm = torch.logsumexp(log_joint, dim=1, keepdim=True)
            resp = (log_joint - log_norm).exp()  # (n, K)
            total += log_norm.double().sum()
            counts += resp.sum(dim=0).double()
            first += (resp.T @ x).double()
            if self.covariance == "full":
                second += torch.einsum("nk,nd,ne->kde", resp, x, x).double()
            else:
                second += (resp.T @ x.pow(2)).double()
        return float(total) / codes.shape[0], (counts, first, second)

    def _m_step(self, stats, reg: float) -> tuple[Tensor, Tensor, Tensor]:
        counts, first, second = stats
        counts = counts + 10 * torch.finfo(counts.dtype).eps  # an empty component keeps finite statistics
        means = first / counts[:, None]
        weights = counts / counts.sum()
        if self.covariance == "full":
            cov = second / counts[:, None, None] - means[:, :, None] * means[:, None, :]
            eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
            scales = torch.linalg.cholesky(0.5 * (cov + cov.transpose(1, 2)) + reg * eye)
        else:
            var = (second / counts[:, None] - means.pow(2)).clamp_min(0)
            scales = (var + reg).sqrt()
        return weights, means, scales

    def _initial_stats(self, codes: Tensor, generator: torch.Generator):
        """Hard assignments of the codes to k-means++ seeds (or random codes): statistics for the first M step."""
        k = min(self.components, codes.shape[0])
        if self.init == "kmeans++":
            centres = kmeans_plus_plus(codes, k, generator)
        else:
            pick = torch.randperm(codes.shape[0], generator=generator, device=generator.device)[:k]
            centres = codes[pick.to(codes.device)]
        if k < self.components:  # fewer codes than components: repeat seeds (their weights split the mass)
            centres = centres[torch.arange(self.components, device=codes.device) % k]
        nearest = torch.cdist(codes, centres).argmin(dim=1)
        codes = codes.double()
        resp = torch.nn.functional.one_hot(nearest, self.components).to(codes.dtype)
        if self.covariance == "full":
            second = torch.einsum("nk,nd,ne->kde", resp, codes, codes)
        else:
            second = resp.T @ codes.pow(2)
        return resp.sum(dim=0), resp.T @ codes, second

    def fit(
        self, codes: Tensor, generator: torch.Generator | None = None, should_stop: StopCheck = None
    ) -> None:
        """EM from k-means++ seeds until the mean log-likelihood gains less than ``tol`` or after ``iterations``
        iterations. ``should_stop`` is polled every iteration (:class:`SamplerFitInterrupted`)."""
        codes = codes.detach().to(self.device).float()  # (N, D); the sums and the M step run in float64
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.fitted.fill_(False)
        self.history = []
        variance = float(codes.double().var(dim=0).mean()) if len(codes) > 1 else 0.0
        reg = self.reg_covar * max(variance, 1e-12)
        params = self._m_step(self._initial_stats(codes, generator), reg)
        for iteration in range(self.iterations + 1):
            if should_stop is not None and should_stop():
                raise SamplerFitInterrupted(
                    f"the {self.name} fit stopped on request ({iteration} EM iterations)"
                )
            log_likelihood, stats = self._e_step(codes, params)
            self.history.append(log_likelihood)
            done = iteration == self.iterations
            if iteration and abs(log_likelihood - self.history[-2]) <= self.tol:
                done = True
            if done:
                break
            params = self._m_step(stats, reg)
        weights, means, scales = params
        self.weights.copy_(weights)
        self.means.copy_(means)
        self.scales.copy_(scales)
        log.info(
            "gmm: %d %s components fitted to %d codes in %d EM iterations, log-likelihood %.4g per code",
            self.components,
            self.covariance,
            codes.shape[0],
            len(self.history) - 1,
            self.history[-1],
        )
        self.fitted.fill_(True)

    def log_likelihood(self, codes: Tensor) -> Tensor:
        """Log density (N,) of codes under the fitted mixture (before projection)."""
        x = codes.detach().to(self.device).double()  # float64 throughout: a reference for tests
        params = (self.weights.double(), self.means.double(), self.scales.double())
        return torch.cat(
            [torch.logsumexp(self._log_joint(c, *params), dim=1) for c in x.split(self.chunk_size)]
        )

    def draw(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        where = generator.device if generator is not None else self.device
        component = torch.multinomial(self.weights.to(where), n, replacement=True, generator=generator)
        component = component.to(self.device)
        noise = _noise(n, self.latent_dim, generator, self.device)  # (n, D)
        if self.covariance == "full":
            return self.means[component] + torch.einsum("nde,ne->nd", self.scales[component], noise)
        return self.means[component] + self.scales[component] * noise


__all__ = ["COVARIANCES", "INITS", "GaussianMixtureSampler"]
