"""GLANN's IMLE sampler (Hoshen, Li & Malik, CVPR 2019): a mapper T from noise e to code space, x = G(T(e)).

Implicit maximum likelihood (Li & Malik, 2018) on the codes: every epoch draws ``draws_per_code`` x N noise vectors,
maps them, matches every code z_i to its nearest mapped draw T(e_j), then regresses T(e_j) onto z_i with minibatch
Adam. The settings are those of GLANN's official code (yedidh/glann ``icp.py``, ``configs/mnist.yaml``): noise dim
32, two hidden layers of 128, 50 epochs, 2 draws per code, batch 128, Adam 1e-3 with betas (0.5, 0.999) and weight
decay 1e-5 on the mean squared error, a fresh optimiser each epoch, the rate halved every 50 epochs.

Where the time goes (60k MNIST codes, a loaded 2-core CPU): the exact matching is 60k x 120k distances in 64
dimensions each epoch (9e11 flops; ~110 s an epoch at load 12); everything else is ~1.5 CPU s. So the matching is
exact on an accelerator or for small problems, and an IVF search (``genbench.ivf``: 512 k-means cells of the
draws, 8 probed) on a CPU: it finds the exact nearest draw for 98% of the codes (the mean matched distance is 0.3% above
the exact one) and the 50-epoch fit takes 94 CPU seconds (``python -m genbench.bench --imle``).
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch
from torch import Tensor, nn

from genbench.ivf import ivf_nearest, kmeans
from genbench.latent import (
    LatentSampler,
    SamplerFitInterrupted,
    StopCheck,
    _noise,
    nearest_neighbours,
    project,
)
from genbench.progress import Progress

log = logging.getLogger(__name__)

SEARCHES = ("auto", "exact", "ivf")
EXACT_FLOPS_ON_CPU = 2e10  # below this (N x M x D x 2) the exact matching takes under ~1 s on a CPU


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """One intra-op thread for the (128 x 128) regression steps on a CPU: two threads spend more time
    synchronising than computing (measured 3.7 vs 6.1 ms a step on the loaded 2-core CPU)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class IMLESampler(LatentSampler):
    """GLANN's IMLE mapper T: noise e (noise_dim) -> code space. GLANN's mapper has batch norm and no biases; this
    one has biases and no batch norm, so that a draw does not depend on the train/eval mode or on its batch.

    ``search``: ``exact`` (every code against every draw), ``ivf`` (approximate; ``lists`` k-means cells of the
    draws, ``probes`` searched per code; the cells are refined by one Lloyd step per epoch from the previous
    epoch's), or ``auto`` (exact on an accelerator or when the exact search is small, else ivf). ``history`` holds
    one record per epoch of the last fit: the matching loss (mean squared distance of a code to its matched draw,
    before the epoch's regression), the regression loss and the seconds.
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
        weight_decay: float = 1e-5,
        search: str = "auto",
        lists: int = 512,
        probes: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__(latent_dim, projection)
        if search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
        if min(noise_dim, hidden, batch_size, draws_per_code, lists, probes) < 1 or epochs < 0:
            raise ValueError("noise_dim, hidden, batch_size, draws_per_code, lists and probes must be >= 1")
        self.noise_dim, self.epochs, self.lr, self.batch_size = noise_dim, epochs, lr, batch_size
        self.draws_per_code, self.seed, self.weight_decay = draws_per_code, seed, weight_decay
        self.decay_every, self.decay = decay_every, decay
        self.search, self.lists, self.probes = search, lists, probes
        self.history: list[dict[str, float]] = []
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
        """Projected T(e) for many noise vectors (M, noise_dim), in big batches without building a graph."""
        with torch.no_grad():
            return torch.cat([project(self.mapper(e), self.projection) for e in noise.split(chunk)])

    def search_for(self, n_codes: int) -> str:
        """The search ``fit`` uses for ``n_codes`` codes: ``exact`` or ``ivf``."""
        if self.search != "auto":
            return self.search
        flops = 2.0 * n_codes * self.draws_per_code * n_codes * self.latent_dim
        return "exact" if self.device.type != "cpu" or flops <= EXACT_FLOPS_ON_CPU else "ivf"

    def matching_loss(self, codes: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The IMLE objective on fresh draws, exactly: mean_i min_j ||z_i - T(e_j)||^2, draws_per_code x N draws."""
        noise = _noise(self.draws_per_code * codes.shape[0], self.noise_dim, generator, self.device)
        return nearest_neighbours(codes.detach().to(self.device).float(), self._mapped(noise))[0].mean()

    def fit(
        self, codes: Tensor, generator: torch.Generator | None = None, should_stop: StopCheck = None
    ) -> None:
        """Train the mapper on codes (N, D) for ``epochs`` epochs. ``should_stop`` is polled between the phases of
        every epoch, during the matching and every 32 regression steps; when it returns True the fit raises
        :class:`SamplerFitInterrupted` (within about a second) and the sampler is left unfitted."""
        codes = codes.detach().to(self.device).float()  # (N, D)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(self.seed)
        n = codes.shape[0]
        batch = min(self.batch_size, n)
        search = self.search_for(n)
        lists = max(1, min(self.lists, self.draws_per_code * n // 32))  # cells of ~32 draws at least
        stop = should_stop or (lambda: False)
        self.fitted.fill_(False)
        self.history = []
        centroids: Tensor | None = None
        log.info(
            "imle: fitting to %d codes, %d epochs, %d draws each, %s matching%s",
            n,
            self.epochs,
            self.draws_per_code * n,
            search,
            f" ({lists} cells, {self.probes} probed)" if search == "ivf" else "",
        )

        def check() -> None:
            if stop():
                raise SamplerFitInterrupted(
                    f"the {self.name} fit stopped on request ({len(self.history)} epochs)"
                )

        was_training = self.mapper.training
        self.mapper.train()
        try:
            with Progress("imle fit", total=self.epochs, unit="epochs", logger=log) as progress:
                for epoch in range(self.epochs):
                    started = time.perf_counter()
                    check()
                    noise = _noise(self.draws_per_code * n, self.noise_dim, generator, self.device)  # (M, e)
                    draws = self._mapped(noise)  # (M, D)
                    check()
                    if search == "exact":
                        dist, match = nearest_neighbours(codes, draws)
                    else:
                        if centroids is None:  # k-means from random draws, then one step per epoch
                            pick = torch.randperm(len(draws), generator=generator, device=generator.device)
                            centroids, cells = kmeans(draws, draws[pick[:lists].to(self.device)], 3)
                        else:
                            centroids, cells = kmeans(draws, centroids, 1)
                        dist, match = ivf_nearest(
                            codes, draws, centroids, cells, self.probes, should_stop=stop
                        )
                    check()
                    regression = self._regress(codes, noise[match], epoch, batch, generator, check)
                    self.history.append(
                        {
                            "epoch": epoch + 1,
                            "matching_loss": float(dist.mean()),
                            "regression_loss": regression,
                            "seconds": time.perf_counter() - started,
                        }
                    )
                    if epoch == 0 or (epoch + 1) % 10 == 0 or epoch + 1 == self.epochs:
                        log.info(
                            "imle epoch %d/%d: matching loss %.4g", epoch + 1, self.epochs, float(dist.mean())
                        )
                    progress.update()
        finally:
            self.mapper.train(was_training)
        self.fitted.fill_(True)

    def _regress(
        self,
        codes: Tensor,
        matched: Tensor,
        epoch: int,
        batch: int,
        generator: torch.Generator,
        check,
    ) -> float:
        """One pass of minibatch Adam on mean ||z_i - T(e_nn(i))||^2 over the codes (GLANN's epoch, last partial
        batch dropped). Returns the mean regression loss."""
        lr = self.lr * self.decay ** (epoch // self.decay_every) if self.decay_every else self.lr
        # A fresh optimiser each epoch, as in GLANN (its moments would be stale after the new matching).
        opt = torch.optim.Adam(
            self.mapper.parameters(),
            lr=lr,
            betas=(0.5, 0.999),
            weight_decay=self.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )
        n = codes.shape[0]
        order = torch.randperm(n, generator=generator, device=generator.device).to(self.device)
        steps = n // batch
        total = torch.zeros((), device=self.device)
        # Out of inference mode (a fit may be called from an evaluation): the gathered batches are then normal
        # tensors that autograd may save.
        with torch.inference_mode(False), torch.enable_grad(), _one_cpu_thread(self.device):
            targets = codes[order[: steps * batch]].view(steps, batch, -1)  # (S, B, D), gathered once
            inputs = matched[order[: steps * batch]].view(steps, batch, -1)  # (S, B, e)
            for step in range(steps):
                if step % 32 == 0:
                    check()
                out = project(self.mapper(inputs[step]), self.projection)
                loss = (out - targets[step]).pow(2).mean()  # nn.MSELoss, as GLANN
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach()
        return float(total) / max(steps, 1)


__all__ = ["SEARCHES", "IMLESampler"]
