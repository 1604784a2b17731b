"""GLO: Generative Latent Optimization (Bojanowski, Joulin, Lopez-Paz & Szlam, "Optimizing the Latent Space of
Generative Networks", ICML 2018).

No encoder: every training image i owns a free code z_i (a row of ``CodeTable``, looked up by ``Batch.index``),
learned jointly with a generator G by minimising loss(G(z_i), x_i), codes projected onto the unit sphere or ball
after every update. Loss: per-pixel L2, the Laplacian-pyramid L1 "Lap1" of the paper, or their weighted sum.

- Codes: ``genbench.codes.LearnedCodes`` owns the table (buffers, not parameters), its row-wise Adam or SGD
  (rows outside a batch never move; ``code_bias_correction: global`` is exactly SparseAdam, what published GLO
  code means by its code rate), the initialisation, the sampler, and encode-by-inversion. Under DDP rank r only
  sees shard r of the indices (``genbench.data.sampler.partition_indices``), so it owns those rows and code
  gradients are never communicated; DDP syncs the generator only. At the end of every epoch and before every
  checkpoint ``sync_codes`` all-gathers each rank's own rows, so every rank (and rank 0's checkpoint) holds all.
- Table size: ``n_codes`` or, when null, the train split's size at ``setup``. Loading a state dict resizes the
  table, so a model rebuilt from the run's config (n_codes: null) loads any checkpoint with ``load_state_dict``.
- Sampling: GLO has no prior; ``sampler`` (conf/model/sampler/*.yaml) is fitted to the codes at the end of
  training (before the last checkpoint, so it is saved in it), or lazily by ``sample`` when the codes changed.
- ``encode`` of unseen images: batched latent optimisation (``genbench.inversion``) with the generator frozen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from genbench import losses
from genbench.codes import LearnedCodes
from genbench.data.batch import Batch
from genbench.interface import GenerativeModel
from genbench.latent import LatentSampler
from genbench.nets.batchnorm import recalibrate_batch_norm

log = logging.getLogger(__name__)


class GLO(GenerativeModel):
    """GLO: a generator trained jointly with ``LearnedCodes`` (table, row-wise optimiser, sampler, inversion).

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
        init_std: float | None = None,
        projection: str = "sphere",
        l2_weight: float = 1.0,
        lap1_weight: float = 0.0,
        optimizer: str = "adam",
        lr_generator: float = 1e-3,
        lr_codes: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        momentum: float = 0.0,
        code_bias_correction: str = "row",
        lr_decay_every: int = 0,
        lr_decay: float = 0.1,
        pca_images: int = 10000,
        inversion_steps: int = 100,
        inversion_lr: float = 0.05,
        inversion_start: str = "mean",
        inversion_candidates: int = 64,
    ) -> None:
        super().__init__()
        if l2_weight < 0 or lap1_weight < 0 or l2_weight + lap1_weight == 0:
            raise ValueError("l2_weight and lap1_weight must be >= 0 and not both 0")
        self.automatic_optimization = False  # two optimisers: torch's for G, the row-wise one for the codes
        self.latent_dim, self.n_codes = latent_dim, n_codes
        self.l2_weight, self.lap1_weight = l2_weight, lap1_weight
        self.optimizer_name, self.lr_generator, self.lr_codes = optimizer, lr_generator, lr_codes
        self.betas, self.momentum = (float(betas[0]), float(betas[1])), momentum
        self.lr_decay_every, self.lr_decay = lr_decay_every, lr_decay
        self.generator = generator(in_features=latent_dim)
        self.codes = LearnedCodes(
            latent_dim,
            sampler,
            projection=projection,
            init=init,
            init_std=init_std,
            pca_images=pca_images,
            optimizer=optimizer,
            betas=self.betas,
            momentum=momentum,
            bias_correction=code_bias_correction,
            inversion_steps=inversion_steps,
            inversion_lr=inversion_lr,
            inversion_start=inversion_start,
            inversion_candidates=inversion_candidates,
            n_codes=n_codes,
        )
        self.latent_geometry = self.codes.latent_geometry
        # DDP must neither all-reduce nor broadcast the codes (rank-owned) or the sampler (fitted after training).
        self._ddp_params_and_buffers_to_ignore = self.codes.ddp_ignored("codes.")
        self._code_lr = lr_codes

    @property
    def sampler(self) -> LatentSampler:
        return self.codes.sampler

    @property
    def sampler_name(self) -> str:
        return self.codes.sampler.name

    @property
    def projection(self) -> str:
        return self.codes.projection

    # -- the contract --------------------------------------------------------------------------------------------
    def decode(self, z: Tensor) -> Tensor:
        return self.generator(z)

    def encode(self, x: Tensor) -> Tensor:
        """Codes (N, D) for images (N, C, H, W) by ``inversion_steps`` of batched Adam, generator frozen."""
        return self.codes.invert(self.generator, x, self._per_image_loss)

    def sample_codes(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes from the sampler (refitted when the codes moved since it was fitted), on the device."""
        return self.codes.sample(n, generator).to(self.device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.decode(self.sample_codes(n, generator))

    def encoding(self) -> dict[str, Any]:
        return self.codes.inversion_protocol()

    def training_codes(self, datamodule=None, batch_size: int = 500) -> Tensor:
        """The learned code table (N, D): one row per training image, in train-split order."""
        return self.codes.weight.detach()

    @property
    def code_projection(self) -> str:
        return self.codes.projection

    def reconstruct(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """Training images (``index`` given) from their learned codes, other images by inversion."""
        if index is None:
            return self.decode(self.encode(x))
        return self.decode(self.codes.lookup(index))

    def fit_sampler(self) -> None:
        """Fit the sampler to the (whole) code table."""
        self.codes.fit_sampler()

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
        seed = getattr(datamodule, "seed", 0) if datamodule is not None else 0
        images = datamodule.split("train").images if datamodule is not None else None
        self.codes.prepare(n, images, trainer.strategy.root_device, seed)
        if trainer.world_size > 1:
            if datamodule is None or not getattr(datamodule, "device_resident", False):
                raise ValueError(
                    "GLO under DDP needs the device-resident datamodule (fixed per-rank index shards)"
                )
            self.codes.shard(trainer.world_size, datamodule.seed)

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
        """Step decay of both rates (GLANN: x0.5 every 20 epochs), a function of the epoch so resuming is exact."""
        factor = self.lr_decay ** (self.current_epoch // self.lr_decay_every) if self.lr_decay_every else 1.0
        for group in self.optimizers().param_groups:
            group["lr"] = self.lr_generator * factor
        self._code_lr = self.lr_codes * factor

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        if batch_idx == 0:
            self.codes.check_ownership(batch.index, self.global_rank)
        optimizer = self.optimizers()
        # (B, D) leaf: its gradient stays local (never all-reduced) and goes to the row-wise optimiser.
        z = self.codes.rows(batch.index)
        parts = self._losses(self.generator(z), batch.image)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(parts["loss"])  # DDP all-reduces the generator's gradients only
        optimizer.step()
        self.codes.update(batch.index, z.grad, self._code_lr)
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
            self.fit_sampler_unless_stopped(self.codes.fit_sampler)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called on every rank (rank 0 writes), so a collective is safe: make mid-epoch checkpoints whole too.
        if not self.codes.synced:
            self.sync_codes()
            for name in self.codes.table.state_names():
                checkpoint["state_dict"][f"codes.table.{name}"] = getattr(self.codes.table, name)

    def _training_ends(self) -> bool:
        trainer = self.trainer
        if trainer.should_stop or (trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps):
            return True
        return (
            trainer.max_epochs is not None
            and trainer.max_epochs != -1
            and self.current_epoch + 1 >= trainer.max_epochs
        )

    # -- codes across ranks, and batch norm -------------------------------------------------------------------------
    def sync_codes(self) -> None:
        """Collective under DDP: every rank gets every other rank's own rows (codes and their optimiser state)."""
        self.codes.sync(self.global_rank)

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
