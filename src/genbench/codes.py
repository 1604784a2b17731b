"""Learned per-image codes, the one component GLO and incremental GLO share (GLO: Bojanowski et al. 2018).

``LearnedCodes`` owns everything about a table of free codes, one row per training image: the table and its
row-wise optimiser (``CodeTable``), the initialisation (PCA or Gaussian), the projection (and so the latent
geometry interpolations follow), the sampler fitted to the codes and whether it is stale, the shard bookkeeping
under DDP, and encoding unseen images by latent inversion. The models keep only their training steps and schedule.

Code updates come in two flavours (``bias_correction``):

- ``row`` (default): Adam with bias correction per row, by the number of updates *that row* has had. A row moves
  about ``lr`` per element per update, whenever it is visited: ``lr`` means the same at any batch or table size.
- ``global``: exactly ``torch.optim.SparseAdam`` on an embedding, bias correction by the table's total number of
  updates. A row first visited at update t moves ``lr (1 - b1) sqrt(1 - b2^t) / ((1 - b1^t) sqrt(1 - b2))`` per
  element: 2.5x ``lr`` at betas (0.9, 0.999) after 1,000 updates, 12.6x at GLANN's (0.5, 0.999). That is what
  published GLO code (SparseAdam, or dense Adam on an embedding) means by its code learning rate: use ``global``
  to reproduce a paper's ``lr_codes``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from itertools import chain
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from genbench.data.sampler import partition_indices
from genbench.inversion import best_of_candidates, invert
from genbench.latent import PROJECTIONS, LatentSampler, project

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
BIAS_CORRECTIONS = ("row", "global")
INITS = ("pca", "gaussian")
INVERSION_STARTS = ("mean", "best_of_k")


class CodeTable(nn.Module):
    """Codes (N, D) with per-row optimiser state, updated only at the rows of a batch.

    Buffers: ``weight`` (N, D) the codes; ``exp_avg`` (N, D) Adam's first moment or SGD's momentum; ``exp_avg_sq``
    (N, D) Adam's second moment (Adam only); ``steps`` (N,) updates per row (``row`` bias correction);
    ``updates`` () updates of the whole table (``global`` bias correction, as SparseAdam's step count).
    """

    def __init__(
        self,
        n: int,
        dim: int,
        projection: str = "sphere",
        optimizer: str = "adam",
        betas: tuple[float, float] = (0.9, 0.999),
        momentum: float = 0.0,
        eps: float = 1e-8,
        bias_correction: str = "row",
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if bias_correction not in BIAS_CORRECTIONS:
            raise ValueError(f"bias_correction must be one of {BIAS_CORRECTIONS}, got {bias_correction!r}")
        self.dim, self.projection, self.optimizer = dim, projection, optimizer
        self.betas, self.momentum, self.eps = (float(betas[0]), float(betas[1])), momentum, eps
        self.bias_correction = bias_correction
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.resize(n)

    def state_names(self) -> list[str]:
        return ["weight", "exp_avg", "steps"] + (["exp_avg_sq"] if self.optimizer == "adam" else [])

    def resize(self, n: int) -> None:
        """(Re)create empty buffers for ``n`` rows on the current device (all zeros: not yet initialised)."""
        device = self.updates.device
        for name in self.state_names():
            shape = (n,) if name == "steps" else (n, self.dim)
            dtype = torch.long if name == "steps" else torch.float32
            self.register_buffer(name, torch.zeros(shape, dtype=dtype, device=device))

    def __len__(self) -> int:
        return self.weight.shape[0]

    @torch.no_grad()
    def update(self, index: Tensor, grad: Tensor, lr: float) -> None:
        """One optimiser step on rows ``index`` (B,) with gradients ``grad`` (B, D), then the projection."""
        rows, inverse = index.unique(return_inverse=True)  # a row listed twice gets the sum of its gradients
        g = grad.new_zeros(rows.shape[0], self.dim).index_add_(0, inverse, grad.float())
        steps = self.steps[rows] + 1
        self.steps[rows] = steps
        self.updates += 1
        if self.optimizer == "adam":
            b1, b2 = self.betas
            m = self.exp_avg[rows].mul_(b1).add_(g, alpha=1 - b1)
            v = self.exp_avg_sq[rows].mul_(b2).addcmul_(g, g, value=1 - b2)
            self.exp_avg[rows], self.exp_avg_sq[rows] = m, v
            if self.bias_correction == "row":
                t = steps.to(g.dtype).unsqueeze(1)
                direction = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + self.eps)
            else:  # SparseAdam: the table's step count, the same correction for every row
                t = int(self.updates)
                direction = m.div(v.sqrt() + self.eps) * (math.sqrt(1 - b2**t) / (1 - b1**t))
        elif self.momentum:
            direction = self.exp_avg[rows].mul_(self.momentum).add_(g)
            self.exp_avg[rows] = direction
        else:
            direction = g
        self.weight[rows] = project(self.weight[rows] - lr * direction, self.projection)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        stored = state_dict.get(prefix + "weight")
        if stored is not None and stored.shape[0] != len(self):
            self.resize(stored.shape[0])  # a model built before the data was known (n_codes: null)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def gather_shards(tensor: Tensor, shards: list[Tensor], rank: int) -> None:
    """Collective, in place: rows ``shards[r]`` of ``tensor`` are taken from rank r, on every rank.

    Each rank sends only its own shard (padded to the longest shard), so the traffic is the table once.
    """
    longest = max(len(s) for s in shards)
    mine = tensor[shards[rank]]
    padded = mine.new_zeros((longest, *tensor.shape[1:]))
    padded[: len(mine)] = mine
    received = [torch.empty_like(padded) for _ in shards]
    dist.all_gather(received, padded)
    for shard, rows in zip(shards, received, strict=True):
        tensor[shard] = rows[: len(shard)]


def pca_codes(
    images: Tensor, dim: int, device: torch.device, seed: int = 0, fit_images: int = 10000
) -> Tensor:
    """Codes (N, dim) from the top principal components of uint8 images (N, C, H, W), mean squared norm 1.

    The components are fitted on at most ``fit_images`` images (a seeded random subset) by a randomized SVD with
    a seeded generator, so every DDP rank computes the same codes; all images are then projected in chunks.
    """
    n = images.shape[0]
    generator = torch.Generator().manual_seed(seed)
    fit = torch.randperm(n, generator=generator)[:fit_images].sort().values
    x = images[fit].flatten(1).to(device).float().div_(255.0)  # (m, P)
    mean = x.mean(dim=0)
    x -= mean
    k = min(dim, *x.shape)
    q = min(k + 10, *x.shape)
    # Randomized range finder (Halko, Martinsson & Tropp 2011) with a seeded test matrix.
    y = x @ torch.randn(x.shape[1], q, generator=generator).to(device)
    for _ in range(4):  # power iterations sharpen the spectrum
        y = x @ (x.T @ torch.linalg.qr(y).Q)
    basis = torch.linalg.qr(y).Q  # (m, q)
    components = torch.linalg.svd(basis.T @ x, full_matrices=False).Vh[:k]  # (k, P)
    codes = torch.zeros(n, dim)
    for start in range(0, n, 4096):
        chunk = images[start : start + 4096].flatten(1).to(device).float().div_(255.0)
        codes[start : start + 4096, :k] = ((chunk - mean) @ components.T).cpu()
    if k < dim:
        log.warning("PCA init: only %d components for latent_dim=%d; the rest start at 0", k, dim)
    return codes / codes.pow(2).sum(dim=1).mean().sqrt().clamp_min(1e-12)


def initial_codes(
    init: str,
    n: int,
    dim: int,
    images: Tensor | None,
    device: torch.device,
    seed: int,
    init_std: float | None = None,
    pca_images: int = 10000,
) -> Tensor:
    """(n, dim) starting codes with per-dimension standard deviation ``init_std`` (on average for PCA).

    ``init_std`` None is 1 / sqrt(dim): mean squared norm 1, codes near the unit sphere. ``images`` (uint8, the
    train split) are needed for ``pca``. Seeded, so every DDP rank computes the same table.
    """
    std = 1 / math.sqrt(dim) if init_std is None else init_std
    if init == "pca":
        if images is None:
            raise ValueError("init=pca needs the datamodule's train images")
        return pca_codes(images, dim, device, seed, pca_images) * (std * math.sqrt(dim))
    return std * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


class LearnedCodes(nn.Module):
    """A table of free codes with its optimiser, initialisation, sampler, DDP shards and inversion.

    ``sampler`` is a partial completed here (latent size and projection). Under DDP the table is either
    ``sharded`` (rank r updates only the rows of its fixed index shard; ``sync`` all-gathers them) or replicated
    (every rank applies every rank's update; the model all-gathers the rows and gradients itself).
    """

    def __init__(
        self,
        latent_dim: int,
        sampler: Callable[..., LatentSampler],
        projection: str = "sphere",
        init: str = "pca",
        init_std: float | None = None,
        pca_images: int = 10000,
        optimizer: str = "adam",
        betas: tuple[float, float] = (0.9, 0.999),
        momentum: float = 0.0,
        bias_correction: str = "row",
        inversion_steps: int = 100,
        inversion_lr: float = 0.05,
        inversion_start: str = "mean",
        inversion_candidates: int = 64,
        n_codes: int | None = None,
    ) -> None:
        super().__init__()
        for value, choices, key in (
            (init, INITS, "init"),
            (projection, PROJECTIONS, "projection"),
            (optimizer, OPTIMIZERS, "optimizer"),
            (bias_correction, BIAS_CORRECTIONS, "bias_correction"),
            (inversion_start, INVERSION_STARTS, "inversion_start"),
        ):
            if value not in choices:
                raise ValueError(f"{key} must be one of {choices}, got {value!r}")
        self.latent_dim, self.projection, self.init, self.init_std = latent_dim, projection, init, init_std
        self.pca_images = pca_images
        self.inversion_steps, self.inversion_lr = inversion_steps, inversion_lr
        self.inversion_start, self.inversion_candidates = inversion_start, inversion_candidates
        self.table = CodeTable(
            n_codes or 0, latent_dim, projection, optimizer, betas, momentum, bias_correction=bias_correction
        )
        self.sampler = sampler(latent_dim=latent_dim, projection=projection)
        self.stale = False  # codes moved since the sampler was fitted
        self.synced = True  # every rank holds the whole table
        self._shards: list[Tensor] | None = None  # per-rank index shards (sharded DDP), None otherwise
        self._owner: Tensor | None = None  # (N,) rank owning each row, to check the batches keep the promise

    # -- what the model reads ---------------------------------------------------------------------------------------
    @property
    def latent_geometry(self) -> str:
        """'sphere' when every code lies on the unit sphere (interpolations then follow great circles)."""
        return "sphere" if self.projection == "sphere" else "euclidean"

    @property
    def weight(self) -> Tensor:
        return self.table.weight

    def __len__(self) -> int:
        return len(self.table)

    def ddp_ignored(self, prefix: str) -> list[str]:
        """State names DDP must neither all-reduce nor broadcast: the rank-owned table and the sampler."""
        names = [f"table.{name}" for name in self.table.state_names()] + ["table.updates"]
        names += [
            f"sampler.{name}"
            for name, _ in chain(self.sampler.named_parameters(), self.sampler.named_buffers())
        ]
        return [prefix + name for name in names]

    def rows(self, index: Tensor) -> Tensor:
        """A detached leaf copy (B, D) of the rows ``index``: its ``.grad`` goes to ``update``."""
        return self.table.weight[index].detach().requires_grad_(True)

    def lookup(self, index: Tensor) -> Tensor:
        return self.table.weight[index.to(self.table.weight.device)]

    def update(self, index: Tensor, grad: Tensor, lr: float) -> None:
        self.table.update(index, grad, lr)
        self.stale = True
        self.synced = self._shards is None

    # -- setup ------------------------------------------------------------------------------------------------------
    def prepare(self, n: int, images: Tensor | None, device: torch.device, seed: int) -> None:
        """Size the table for ``n`` rows and initialise it when fresh (a resumed table is never all zero)."""
        if len(self.table) != n:
            self.table.resize(n)
        if self.table.weight.any():
            return
        codes = initial_codes(
            self.init, n, self.latent_dim, images, device, seed, self.init_std, self.pca_images
        )
        self.table.weight.copy_(project(codes, self.projection))
        log.info(
            "%d codes of dim %d initialised by %s, projection %s",
            n,
            self.latent_dim,
            self.init,
            self.projection,
        )

    def shard(self, world_size: int, seed: int) -> None:
        """Fix each rank's rows (the datamodule's per-rank index shards) for sharded DDP."""
        self._shards = partition_indices(len(self.table), world_size, seed)
        self._owner = torch.empty(len(self.table), dtype=torch.long)
        for rank, shard in enumerate(self._shards):
            self._owner[shard] = rank

    def check_ownership(self, index: Tensor, rank: int) -> None:
        if self._owner is None:
            return
        owner = self._owner.to(index.device)[index]
        if not bool((owner == rank).all()):
            raise RuntimeError(
                f"rank {rank} got indices of another rank's shard of the codes; the datamodule must batch with "
                "fixed per-rank shards (genbench.data.sampler.IndexBatchSampler)"
            )

    def sync(self, rank: int) -> None:
        """Collective under sharded DDP: every rank gets every other rank's own rows (codes and optimiser state)."""
        if self.synced or self._shards is None:
            return
        shards = [s.to(self.table.weight.device) for s in self._shards]
        for name in self.table.state_names():
            gather_shards(getattr(self.table, name), shards, rank)
        self.synced = True

    # -- the sampler ------------------------------------------------------------------------------------------------
    def fit_sampler(self, should_stop: Callable[[], bool] | None = None) -> None:
        """Fit the sampler to the (whole) table. ``should_stop`` is polled during long fits (IMLE): when it
        returns True the fit raises ``SamplerFitInterrupted`` and the sampler stays unfitted (refitted on demand)."""
        if len(self.table) == 0:
            raise RuntimeError(
                f"cannot fit the {self.sampler.name} sampler: no codes (train or load a checkpoint)"
            )
        log.info("fitting the %s sampler to %d codes", self.sampler.name, len(self.table))
        self.sampler.fit(self.table.weight, should_stop=should_stop)
        self.stale = False

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes from the sampler, refitted first when the codes moved since."""
        if self.stale or not bool(self.sampler.fitted):
            self.fit_sampler()
        return self.sampler.sample(n, generator)

    # -- unseen images ------------------------------------------------------------------------------------------------
    def invert(
        self,
        generator: nn.Module,
        x: Tensor,
        per_image_loss: Callable[[Tensor, Tensor], Tensor],
        start: str | None = None,
    ) -> Tensor:
        """Codes (N, D) for images (N, C, H, W) by batched Adam on the codes, ``generator`` frozen in eval mode."""
        if len(self.table) == 0:
            raise RuntimeError("encoding by inversion needs learned codes (train or load a checkpoint first)")
        was_training = generator.training
        generator.eval()  # batch norm on running statistics: images do not interact, nothing is updated
        try:
            begin = self.inversion_start_codes(generator, x, start or self.inversion_start)
            return invert(
                generator, x, begin, self.inversion_steps, self.inversion_lr, per_image_loss, self.projection
            )
        finally:
            generator.train(was_training)

    def inversion_protocol(self) -> dict[str, Any]:
        """What encoding by inversion does, for metric protocols (test reconstructions depend on every one)."""
        out: dict[str, Any] = {
            "encode": "latent inversion (Adam on the codes, generator frozen)",
            "inversion_steps": self.inversion_steps,
            "inversion_lr": self.inversion_lr,
            "inversion_start": self.inversion_start,
        }
        if self.inversion_start == "best_of_k":
            out["inversion_candidates"] = self.inversion_candidates
        return out

    def inversion_start_codes(self, decode: Callable[[Tensor], Tensor], x: Tensor, start: str) -> Tensor:
        """(N, D): the projected mean code, or per image the best of ``inversion_candidates`` table rows."""
        codes = self.table.weight.to(x.device)
        if start == "mean":
            return project(codes.mean(dim=0, keepdim=True), self.projection).expand(x.shape[0], -1)
        generator = torch.Generator(device=codes.device).manual_seed(0)  # the same candidates every call
        k = min(self.inversion_candidates, len(codes))
        candidates = codes[torch.randperm(len(codes), generator=generator, device=codes.device)[:k]]
        return best_of_candidates(decode, x, candidates)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.stale, self.synced = False, True


__all__ = [
    "BIAS_CORRECTIONS",
    "CodeTable",
    "LearnedCodes",
    "gather_shards",
    "initial_codes",
    "pca_codes",
]
