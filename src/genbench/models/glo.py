"""GLO: Generative Latent Optimization (Bojanowski, Joulin, Lopez-Paz & Szlam, "Optimizing the Latent Space of
Generative Networks", ICML 2018).

No encoder: every training image i owns a free code z_i (a row of ``CodeTable``, looked up by ``Batch.index``),
learned jointly with a generator G by minimising loss(G(z_i), x_i), codes projected onto the unit sphere or ball
after every update. Loss: per-pixel L2, the Laplacian-pyramid L1 "Lap1" of the paper, or their weighted sum.

- Sparse updates: codes are buffers, not parameters. A step differentiates through a detached copy of the batch's
  rows and ``CodeTable.update`` applies row-wise Adam (moments and bias correction per row) or SGD to those rows
  only, so rows outside the batch never move (a dense Adam would keep moving them with stale moments).
- Multi-GPU: rank r only ever sees shard r of the indices (``genbench.data.sampler.partition_indices``), so it owns
  those rows and code gradients are never communicated; DDP syncs the generator only (the table is listed in
  ``_ddp_params_and_buffers_to_ignore``). At the end of every epoch and before every checkpoint ``sync_codes``
  all-gathers each rank's own rows, so every rank (and so rank 0's checkpoint) holds the whole table.
- Table size: ``n_codes`` or, when null, the train split's size at ``setup``. Loading a state dict resizes the
  table, so a model rebuilt from the run's config (n_codes: null) loads any checkpoint with ``load_state_dict``.
- Sampling: GLO has no prior; ``sampler`` (conf/model/sampler/*.yaml) is fitted to the codes at the end of
  training (before the last checkpoint, so it is saved in it), or lazily by ``sample`` when the codes changed.
- ``encode`` of unseen images: batched latent optimisation (``genbench.inversion``) with the generator frozen.
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

from genbench import losses
from genbench.data.batch import Batch
from genbench.data.sampler import partition_indices
from genbench.interface import GenerativeModel
from genbench.inversion import best_of_candidates, invert
from genbench.latent import PROJECTIONS, LatentSampler, project
from genbench.nets.batchnorm import recalibrate_batch_norm

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
INITS = ("pca", "gaussian")
INVERSION_STARTS = ("mean", "best_of_k")


class CodeTable(nn.Module):
    """Codes (N, D) with per-row optimiser state, updated only at the rows of a batch.

    Buffers: ``weight`` (N, D) the codes; ``exp_avg`` (N, D) Adam's first moment or SGD's momentum; ``exp_avg_sq``
    (N, D) Adam's second moment (Adam only); ``steps`` (N,) updates per row (Adam's bias correction is per row).
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
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.dim, self.projection, self.optimizer = dim, projection, optimizer
        self.betas, self.momentum, self.eps = (float(betas[0]), float(betas[1])), momentum, eps
        self.resize(n)

    def state_names(self) -> list[str]:
        return ["weight", "exp_avg", "steps"] + (["exp_avg_sq"] if self.optimizer == "adam" else [])

    def resize(self, n: int) -> None:
        """(Re)create empty buffers for ``n`` rows on the current device (all zeros: not yet initialised)."""
        device = self.weight.device if hasattr(self, "weight") else None
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
        if self.optimizer == "adam":
            b1, b2 = self.betas
            m = self.exp_avg[rows].mul_(b1).add_(g, alpha=1 - b1)
            v = self.exp_avg_sq[rows].mul_(b2).addcmul_(g, g, value=1 - b2)
            self.exp_avg[rows], self.exp_avg_sq[rows] = m, v
            t = steps.to(g.dtype).unsqueeze(1)
            direction = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + self.eps)
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


class GLO(GenerativeModel):
    """GLO with a code table, row-wise code optimiser, a pluggable sampler and latent inversion.

    ``generator`` and ``sampler`` are partials completed here (in_features / latent_dim and projection).
    Losses are per pixel (mean over pixels, then over the batch) so weights and rates carry across image sizes.
    """

    def __init__(
        self,
        generator: Callable[..., nn.Module],
        sampler: Callable[..., LatentSampler],
        latent_dim: int = 64,
        n_codes: int | None = None,
        init: str = "pca",
        projection: str = "sphere",
        l2_weight: float = 1.0,
        lap1_weight: float = 0.0,
        optimizer: str = "adam",
        lr_generator: float = 1e-3,
        lr_codes: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        momentum: float = 0.0,
        lr_decay_every: int = 0,
        lr_decay: float = 0.1,
        pca_images: int = 10000,
        inversion_steps: int = 100,
        inversion_lr: float = 0.05,
        inversion_start: str = "mean",
        inversion_candidates: int = 64,
    ) -> None:
        super().__init__()
        for value, choices, key in (
            (init, INITS, "init"),
            (projection, PROJECTIONS, "projection"),
            (optimizer, OPTIMIZERS, "optimizer"),
            (inversion_start, INVERSION_STARTS, "inversion_start"),
        ):
            if value not in choices:
                raise ValueError(f"{key} must be one of {choices}, got {value!r}")
        if l2_weight < 0 or lap1_weight < 0 or l2_weight + lap1_weight == 0:
            raise ValueError("l2_weight and lap1_weight must be >= 0 and not both 0")
        self.automatic_optimization = False  # two optimisers: torch's for G, the row-wise one for the codes
        self.latent_dim, self.n_codes, self.init, self.projection = latent_dim, n_codes, init, projection
        self.l2_weight, self.lap1_weight = l2_weight, lap1_weight
        self.optimizer_name, self.lr_generator, self.lr_codes = optimizer, lr_generator, lr_codes
        self.betas, self.momentum = (float(betas[0]), float(betas[1])), momentum
        self.lr_decay_every, self.lr_decay, self.pca_images = lr_decay_every, lr_decay, pca_images
        self.inversion_steps, self.inversion_lr = inversion_steps, inversion_lr
        self.inversion_start, self.inversion_candidates = inversion_start, inversion_candidates
        self.generator = generator(in_features=latent_dim)
        self.sampler = sampler(latent_dim=latent_dim, projection=projection)
        self.codes = CodeTable(n_codes or 0, latent_dim, projection, optimizer, self.betas, momentum)
        # DDP must neither all-reduce nor broadcast the codes (rank-owned) or the sampler (fitted after training).
        self._ddp_params_and_buffers_to_ignore = [f"codes.{name}" for name in self.codes.state_names()] + [
            f"sampler.{name}"
            for name, _ in chain(self.sampler.named_parameters(), self.sampler.named_buffers())
        ]
        self._code_lr = lr_codes
        self._shards: list[Tensor] | None = None  # per-rank index shards under DDP, None on one process
        self._owner: Tensor | None = None  # (N,) rank owning each row, to check the sampler kept its promise
        self._synced = True  # every rank holds the whole table
        self._sampler_stale = False  # codes moved since the sampler was fitted

    @property
    def sampler_name(self) -> str:
        return self.sampler.name

    # -- the contract --------------------------------------------------------------------------------------------
    def decode(self, z: Tensor) -> Tensor:
        return self.generator(z)

    def encode(self, x: Tensor) -> Tensor:
        """Codes (N, D) for images (N, C, H, W) by ``inversion_steps`` of batched Adam, generator frozen."""
        if len(self.codes) == 0:
            raise RuntimeError("GLO.encode needs learned codes (train the model or load a checkpoint first)")
        was_training = self.generator.training
        self.generator.eval()  # batch norm on running statistics: images do not interact, nothing is updated
        try:
            return invert(
                self.decode,
                x,
                self._inversion_start(x),
                self.inversion_steps,
                self.inversion_lr,
                self._per_image_loss,
                self.projection,
            )
        finally:
            self.generator.train(was_training)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if self._sampler_stale or not bool(self.sampler.fitted):
            self.fit_sampler()
        return self.decode(self.sampler.sample(n, generator).to(self.device))

    def reconstruct(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """Training images (``index`` given) from their learned codes, other images by inversion."""
        if index is None:
            return self.decode(self.encode(x))
        return self.decode(self.codes.weight[index.to(self.codes.weight.device)])

    # -- losses --------------------------------------------------------------------------------------------------
    def _per_image_loss(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """Weighted per-pixel L2 + Lap1 per image. (N, C, H, W) x 2 -> (N,)."""
        loss = self.l2_weight * losses.squared_error(x_hat, x)
        if self.lap1_weight:
            loss = loss + self.lap1_weight * losses.lap1(x_hat, x)
        return loss / x[0].numel()

    def _losses(self, x_hat: Tensor, x: Tensor) -> dict[str, Tensor]:
        pixels = x[0].numel()
        parts = {"recon_mse": losses.squared_error(x_hat, x).mean() / pixels}
        loss = self.l2_weight * parts["recon_mse"]
        if self.lap1_weight:
            parts["lap1"] = losses.lap1(x_hat, x).mean() / pixels
            loss = loss + self.lap1_weight * parts["lap1"]
        parts["loss"] = loss
        return parts

    # -- setup: size, initialise and shard the table --------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        trainer, datamodule = self.trainer, self.trainer.datamodule
        n = self.n_codes
        if datamodule is not None:
            n_train = len(datamodule.split("train"))
            if n is not None and n != n_train:
                raise ValueError(f"model.n_codes={n} but the train split has {n_train} images")
            n = n_train
        if n is None:
            raise ValueError(
                "GLO needs model.n_codes when the trainer has no datamodule to read the train split from"
            )
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            raise ValueError(
                "GLO does not support fp16 loss scaling (the code gradients would stay scaled); use bf16"
            )
        if len(self.codes) != n:
            self.codes.resize(n)
        if not self.codes.weight.any():  # fresh (a resumed or trained table is never all zero)
            self._initialise_codes(datamodule, trainer.strategy.root_device)
        if trainer.world_size > 1:
            if datamodule is None or not getattr(datamodule, "device_resident", False):
                raise ValueError(
                    "GLO under DDP needs the device-resident datamodule (fixed per-rank index shards)"
                )
            self._shards = partition_indices(n, trainer.world_size, datamodule.seed)
            self._owner = torch.empty(n, dtype=torch.long)
            for rank, shard in enumerate(self._shards):
                self._owner[shard] = rank

    @torch.no_grad()
    def _initialise_codes(self, datamodule, device: torch.device) -> None:
        seed = getattr(datamodule, "seed", 0) if datamodule is not None else 0
        n = len(self.codes)
        if self.init == "pca":
            if datamodule is None:
                raise ValueError("init=pca needs the datamodule's train images")
            codes = pca_codes(
                datamodule.split("train").images, self.latent_dim, device, seed, self.pca_images
            )
        else:  # N(0, I / D): norms near 1, like the PCA codes
            codes = torch.randn(
                n, self.latent_dim, generator=torch.Generator().manual_seed(seed)
            ) / math.sqrt(self.latent_dim)
        self.codes.weight.copy_(project(codes, self.projection))
        log.info(
            "GLO: %d codes of dim %d initialised by %s, projection %s",
            n,
            self.latent_dim,
            self.init,
            self.projection,
        )

    # -- training ------------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "adam":
            return torch.optim.Adam(
                self.generator.parameters(), lr=self.lr_generator, betas=self.betas, fused=True
            )
        return torch.optim.SGD(
            self.generator.parameters(), lr=self.lr_generator, momentum=self.momentum, fused=True
        )

    def on_train_epoch_start(self) -> None:
        """Step decay of both rates (GLANN: x0.1 every 20 epochs), a function of the epoch so resuming is exact."""
        factor = self.lr_decay ** (self.current_epoch // self.lr_decay_every) if self.lr_decay_every else 1.0
        for group in self.optimizers().param_groups:
            group["lr"] = self.lr_generator * factor
        self._code_lr = self.lr_codes * factor

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        if self._owner is not None and batch_idx == 0:
            self._check_ownership(batch.index)
        optimizer = self.optimizers()
        # (B, D) leaf: its gradient stays local (never all-reduced) and goes to the row-wise optimiser.
        z = self.codes.weight[batch.index].detach().requires_grad_(True)
        parts = self._losses(self.generator(z), batch.image)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(parts["loss"])  # DDP all-reduces the generator's gradients only
        optimizer.step()
        self.codes.update(batch.index, z.grad, self._code_lr)
        self._synced = self._owner is None
        self._sampler_stale = True
        size = batch.image.shape[0]
        self.log_train_step({f"train/{k}": v.detach() for k, v in parts.items()}, size, batch_idx)
        return parts["loss"].detach()

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        # Gather before any epoch-end hook (evaluation callbacks, checkpoints) reads the table.
        trainer = self.trainer
        if batch_idx + 1 >= trainer.num_training_batches or self._training_ends():
            self.sync_codes()

    def on_train_epoch_end(self) -> None:
        # Runs before ModelCheckpoint's epoch-end save and before the Evaluation callback's on_train_end.
        self.sync_codes()
        if self._training_ends():
            self.recalibrate_batch_norm()
            self.fit_sampler()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called on every rank (rank 0 writes), so a collective is safe: make mid-epoch checkpoints whole too.
        if not self._synced:
            self.sync_codes()
            for name in self.codes.state_names():
                checkpoint["state_dict"][f"codes.{name}"] = getattr(self.codes, name)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._synced, self._sampler_stale = True, False

    def _training_ends(self) -> bool:
        trainer = self.trainer
        if trainer.should_stop or (trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps):
            return True
        return (
            trainer.max_epochs is not None
            and trainer.max_epochs != -1
            and self.current_epoch + 1 >= trainer.max_epochs
        )

    def _check_ownership(self, index: Tensor) -> None:
        owner = self._owner.to(index.device)[index]
        if not bool((owner == self.global_rank).all()):
            raise RuntimeError(
                f"GLO: rank {self.global_rank} got indices of another rank's shard; the datamodule must batch with "
                "fixed per-rank shards (genbench.data.sampler.IndexBatchSampler)"
            )

    # -- codes across ranks, and the sampler ------------------------------------------------------------------------
    def sync_codes(self) -> None:
        """Collective under DDP: every rank gets every other rank's own rows (codes and their optimiser state)."""
        if self._synced or self._shards is None:
            return
        shards = [s.to(self.codes.weight.device) for s in self._shards]
        for name in self.codes.state_names():
            gather_shards(getattr(self.codes, name), shards, self.global_rank)
        self._synced = True

    @torch.no_grad()
    def recalibrate_batch_norm(self, batch_size: int | None = None, max_codes: int = 10000) -> None:
        """Recompute the generator's batch-norm running statistics on the learned codes with the final weights.

        The running averages (momentum 0.1) keep 0.9^steps of their initial variance of 1, while the codes'
        pre-activations have variances near 1e-3: after a short run that remnant dominates and eval-mode images
        are far off. One forward pass over the codes in train mode with a cumulative average fixes it ("precise
        BN") on a fixed random subset of at most ``max_codes`` codes (plenty for per-channel statistics).
        Deterministic, so every DDP rank computes the same statistics.
        """
        if len(self.codes) == 0:
            return
        if batch_size is None:
            datamodule = self.trainer.datamodule if self._trainer is not None else None
            batch_size = getattr(datamodule, "batch_size", 256)
        codes = self.codes.weight
        order = torch.randperm(len(codes), generator=torch.Generator().manual_seed(0))[:max_codes].to(
            codes.device
        )
        batches = (codes[order[start : start + batch_size]] for start in range(0, len(order), batch_size))
        recalibrate_batch_norm(self.generator, batches)

    def fit_sampler(self) -> None:
        """Fit the sampler to the (whole) code table."""
        if len(self.codes) == 0:
            raise RuntimeError(
                f"GLO cannot fit its {self.sampler_name} sampler: no codes (train or load a checkpoint)"
            )
        log.info("GLO: fitting the %s sampler to %d codes", self.sampler_name, len(self.codes))
        self.sampler.fit(self.codes.weight)
        self._sampler_stale = False

    # -- inversion start -----------------------------------------------------------------------------------------
    def _inversion_start(self, x: Tensor) -> Tensor:
        codes = self.codes.weight.to(x.device)
        if self.inversion_start == "mean":
            return project(codes.mean(dim=0, keepdim=True), self.projection).expand(x.shape[0], -1)
        generator = torch.Generator(device=codes.device).manual_seed(0)  # the same candidates every call
        k = min(self.inversion_candidates, len(codes))
        candidates = codes[torch.randperm(len(codes), generator=generator, device=codes.device)[:k]]
        return best_of_candidates(self.decode, x, candidates)
