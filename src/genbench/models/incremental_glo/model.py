"""Incremental GLO (Helman, Zingerman & Schreiber, "Improving the GLO learning process", Tel Aviv University 2019).

GLO (free code per training image, learned with a generator G; ``genbench.models.glo``) trained in stages, all
phases of one Lightning run, then an encoder:

1. Curriculum (``genbench.curriculum``): features (ResNet-50 or pixels) -> PCA -> k-means -> the k images nearest
   each centroid form subset 1; again on the images left for ``n_stages - 1`` rounds; the rest is the last subset.
   Computed once at the start of fit, stored in the buffer ``subset_of`` (so checkpoints carry it) and written to
   ``curriculum_file``.
2. Subset stage 1: GLO on subset 1. Subset stage k > 1: previous_weight * loss(previous subsets, codes frozen)
   + current_weight * loss(subset k); each step draws ``previous_batch_size`` and ``current_batch_size`` images
   from the stage's subsets itself (the datamodule's batch only clocks the step).
3. Whole stage, on the datamodule's batches: clean_weight * L(G(z), x) + continuity_weight * L(G(z + eps), x),
   eps ~ N(0, continuity_sigma^2 I): the continuity term.
4. Encoder stage: E(x) regresses each image's code with encoder_l1_weight * L1 + encoder_l2_weight * L2; G and the
   codes are frozen.

Stages last ``subset_epochs`` (each subset stage), ``final_epochs`` and ``encoder_epochs`` trainer epochs; the stage
is a function of ``current_epoch``, so a checkpoint taken mid-stage resumes in that stage, and the index draws of a
subset stage are seeded by the step, so resuming replays them. L is ``image_loss`` (``genbench.perceptual``: the
report's VGG16 perceptual loss, or L2 + Lap1 without weights). Codes are ``genbench.codes.LearnedCodes`` (row-wise
Adam: codes outside the step's rows never move). Under DDP the table is replicated: the rows and gradients of a step are
all-gathered (traffic proportional to the batch) and every rank applies the same update.

``encode``: the encoder once its stage has begun, GLO latent inversion before. ``reconstruct(x, index)``: learned
codes for training images, decode(encode(x)) otherwise. ``sample``: a sampler fitted to the codes (latent.py).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from genbench import curriculum
from genbench.codes import LearnedCodes
from genbench.data.batch import Batch
from genbench.interface import GenerativeModel
from genbench.io import write_json
from genbench.latent import LatentSampler, project
from genbench.models.incremental_glo.settings import (
    Curriculum,
    EncoderFit,
    StageEpochs,
    StageLosses,
    settings,
)
from genbench.models.incremental_glo.stages import Stage, schedule, stage_at
from genbench.nets.batchnorm import recalibrate_batch_norm
from genbench.nets.pretrained import ResNet50Features, VGG16Blocks
from genbench.perceptual import PerceptualLoss

log = logging.getLogger(__name__)


def continuity_noise(z: Tensor, sigma: float) -> Tensor:
    """eps ~ N(0, sigma^2 I), shaped like codes z (B, D)."""
    return sigma * torch.randn_like(z)


@torch.no_grad()
def shuffled_batches(n: int, batch_size: int, fetch: Callable[[Tensor], Tensor]) -> Iterator[Tensor]:
    """``fetch(index)`` for the batches of a fixed (seed 0) permutation of range(n)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    for start in range(0, n, batch_size):
        yield fetch(order[start : start + batch_size])


class IncrementalGLO(GenerativeModel):
    """GLO trained over a k-means curriculum with a continuity term, then an encoder. See the module docstring.

    ``generator``, ``encoder`` and ``sampler`` are partials completed here (latent size, projection);
    ``features`` (images -> (N, F)) and ``image_loss`` ((x_hat, x) -> (N,)) are built modules.
    """

    def __init__(
        self,
        generator: Callable[..., nn.Module],
        encoder: Callable[..., nn.Module],
        sampler: Callable[..., LatentSampler],
        features: nn.Module,
        image_loss: nn.Module,
        latent_dim: int = 32,
        n_codes: int | None = None,
        init: str = "pca",
        init_std: float = 1.0,
        projection: str = "none",
        curriculum: Curriculum | Mapping[str, Any] | None = None,
        stages: StageEpochs | Mapping[str, Any] | None = None,
        stage_losses: StageLosses | Mapping[str, Any] | None = None,
        encoder_fit: EncoderFit | Mapping[str, Any] | None = None,
        lr_generator: float = 1e-3,
        lr_codes: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        code_bias_correction: str = "row",
        inversion_steps: int = 100,
        inversion_lr: float = 0.05,
        inversion_start: str = "mean",
        inversion_candidates: int = 64,
    ) -> None:
        super().__init__()
        self.curriculum = settings(Curriculum, curriculum)
        self.stage_epochs = epochs = settings(StageEpochs, stages)
        self.stage_losses = weights = settings(StageLosses, stage_losses)
        self.encoder_fit = settings(EncoderFit, encoder_fit)
        if min(epochs.subset_epochs, epochs.final_epochs, epochs.encoder_epochs) < 0 or (
            epochs.subset_epochs + epochs.final_epochs == 0
        ):
            raise ValueError(
                "stage epochs must be >= 0, and the decoder needs subset_epochs or final_epochs > 0"
            )
        if (
            min(
                weights.continuity_sigma,
                weights.continuity_weight,
                weights.clean_weight,
                weights.previous_weight,
                weights.current_weight,
            )
            < 0
        ):
            raise ValueError("loss weights and continuity_sigma must be >= 0")
        self.automatic_optimization = False  # generator, encoder and the row-wise code optimiser
        self.latent_dim, self.n_codes = latent_dim, n_codes
        self.stages = schedule(
            self.curriculum.n_stages, epochs.subset_epochs, epochs.final_epochs, epochs.encoder_epochs
        )
        self.lr_generator, self.lr_codes = lr_generator, lr_codes
        self.betas = (float(betas[0]), float(betas[1]))

        self.generator = generator(in_features=latent_dim)
        self.encoder = encoder(out_features=latent_dim)
        self.codes = LearnedCodes(
            latent_dim,
            sampler,
            projection=projection,
            init=init,
            init_std=init_std,
            optimizer="adam",
            betas=self.betas,
            bias_correction=code_bias_correction,
            inversion_steps=inversion_steps,
            inversion_lr=inversion_lr,
            inversion_start=inversion_start,
            inversion_candidates=inversion_candidates,
            n_codes=n_codes,
        )
        self.latent_geometry = self.codes.latent_geometry
        # Frozen nets: their weights are non-persistent buffers (moved with the model, never checkpointed).
        self.features, self.image_loss = features, image_loss
        # (N,) the subset of each training image, -1 before the split; saved with every checkpoint.
        self.register_buffer("subset_of", torch.full((n_codes or 0,), -1, dtype=torch.long))
        self.register_buffer("encoder_steps", torch.zeros((), dtype=torch.long))
        # Which setting ran: the report's (ResNet-50 clustering + VGG16 perceptual loss) or the weight-free one.
        # n_stages 1 has no curriculum, so no clustering features to judge.
        clustering = self.curriculum.n_stages == 1 or isinstance(features, ResNet50Features)
        self.setting = {
            "features": getattr(features, "name", type(features).__name__)
            if self.curriculum.n_stages > 1
            else "none",
            "image_loss": getattr(image_loss, "name", type(image_loss).__name__),
            "report_setting": clustering
            and isinstance(image_loss, PerceptualLoss)
            and isinstance(image_loss.network, VGG16Blocks),
        }
        # DDP syncs the generator and encoder (parameters and batch-norm statistics) only: the code table is kept
        # identical on every rank by the all-gathered updates, and the frozen nets never change.
        self._ddp_params_and_buffers_to_ignore = self.codes.ddp_ignored("codes.") + [
            name
            for name, _ in self.named_buffers()
            if not name.startswith(("generator.", "encoder.", "codes."))
        ]
        self._subsets: list[Tensor] = []  # index tensors per subset, from subset_of, on the model's device
        self._previous: list[Tensor] = []  # _previous[s]: the indices of subsets 0..s-1, concatenated
        # The train images by index, from setup: the subset steps draw their own batches, and read nothing else
        # from the trainer, so the step also runs outside a Trainer (the benchmark's plain loop).
        self._train_images: Callable[[Tensor, torch.device], Tensor] | None = None
        self._seed = 0
        self._bn_stale = False  # generator moved since its batch-norm statistics were recalibrated
        self._encoder_bn_stale = False  # encoder moved since its batch-norm statistics were recalibrated
        self._warned_inversion = False

    @property
    def sampler(self) -> LatentSampler:
        return self.codes.sampler

    @property
    def sampler_name(self) -> str:
        return self.codes.sampler.name

    @property
    def projection(self) -> str:
        return self.codes.projection

    @property
    def current_stage(self) -> Stage:
        """The stage of the current epoch."""
        return stage_at(self.stages, self.current_epoch)

    # -- the contract --------------------------------------------------------------------------------------------
    def decode(self, z: Tensor) -> Tensor:
        return self.generator(z)

    def encode(self, x: Tensor) -> Tensor:
        """Codes (N, D) of images (N, C, H, W): the encoder once its stage has begun, else latent inversion."""
        if int(self.encoder_steps) > 0:
            return self.encoder(x)
        if not self._warned_inversion:
            log.warning(
                "incremental GLO: the encoder is not trained yet; encode falls back to latent inversion"
            )
            self._warned_inversion = True
        return self.codes.invert(self.generator, x, self.image_loss)

    def sample_codes(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes from the sampler (refitted when the codes moved since it was fitted), on the device."""
        return self.codes.sample(n, generator).to(self.device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.decode(self.sample_codes(n, generator))

    def encoding(self) -> dict[str, Any]:
        if int(self.encoder_steps) > 0:
            return {"encode": "encoder"}
        return self.codes.inversion_protocol()

    def training_codes(self, datamodule=None, batch_size: int = 500) -> Tensor:
        """The learned code table (N, D): one row per training image, in train-split order."""
        return self.codes.weight.detach()

    @property
    def code_projection(self) -> str:
        return self.codes.projection

    def reconstruct(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """Training images (``index`` given) from their learned codes, others by decode(encode(x))."""
        if index is None:
            return self.decode(self.encode(x))
        return self.decode(self.codes.lookup(index))

    def fit_sampler(self) -> None:
        self.codes.fit_sampler()

    # -- setup: the code table and the curriculum -------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "images"):
            raise ValueError(
                "IncrementalGLO trains from a genbench ImageDataModule (it draws subset images by index)"
            )
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            raise ValueError(
                "IncrementalGLO does not support fp16 loss scaling (code gradients would stay scaled)"
            )
        n = len(datamodule.split("train"))
        if self.n_codes is not None and self.n_codes != n:
            raise ValueError(f"model.n_codes={self.n_codes} but the train split has {n} images")
        if (
            self.curriculum.n_stages - 1
        ) * self.curriculum.n_clusters * self.curriculum.k_representatives >= n:
            raise ValueError(
                f"the curriculum ({self.curriculum.n_stages - 1} rounds of {self.curriculum.n_clusters} clusters x "
                f"{self.curriculum.k_representatives} representatives) needs more than the {n} training images"
            )
        self._seed = int(getattr(datamodule, "seed", 0))
        self._train_images = functools.partial(datamodule.images, "train")
        if len(self.subset_of) != n:
            self.subset_of = torch.full((n,), -1, dtype=torch.long, device=self.subset_of.device)
        # fresh codes are initialised here; a resumed checkpoint replaces them after setup
        self.codes.prepare(n, datamodule.split("train").images, self.trainer.strategy.root_device, self._seed)

    def on_fit_start(self) -> None:
        # After the checkpoint's state is restored: a resumed run keeps the split it was trained with.
        if bool((self.subset_of < 0).any()):
            self.subset_of.copy_(self._compute_split())
        self._subsets = [
            torch.nonzero(self.subset_of == s).squeeze(1) for s in range(self.curriculum.n_stages)
        ]
        self._previous = [
            torch.cat([self.subset_of[:0], *self._subsets[:s]]) for s in range(self.curriculum.n_stages)
        ]
        if self.trainer.is_global_zero and self.curriculum.file:
            self._write_curriculum(Path(self.curriculum.file))
        total = sum(s.epochs for s in self.stages)
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and 0 <= max_epochs < total:
            log.warning(
                "incremental GLO: trainer.max_epochs=%d < the %d epochs of its stages; training stops in stage %s",
                max_epochs,
                total,
                stage_at(self.stages, max_epochs - 1).name,
            )

    def _compute_split(self) -> Tensor:
        """(N,) subset of each training index; computed on rank 0 and broadcast."""
        if self.curriculum.n_stages == 1:  # no curriculum (plain GLO, with or without the continuity term)
            return torch.zeros_like(self.subset_of)
        subset_of = None
        if self.trainer.is_global_zero:
            images = self.trainer.datamodule.split("train").images
            log.info(
                "incremental GLO: %s features of %d images -> PCA %d -> k-means %d -> %d per cluster, %d stages",
                self.setting["features"],
                len(images),
                self.curriculum.pca_dim,
                self.curriculum.n_clusters,
                self.curriculum.k_representatives,
                self.curriculum.n_stages,
            )
            features = curriculum.extract_features(
                self.features, images, self.curriculum.feature_batch_size, self.device
            )
            subsets = curriculum.split(
                features,
                self.curriculum.n_stages,
                self.curriculum.n_clusters,
                self.curriculum.k_representatives,
                self.curriculum.pca_dim,
                self._seed,
            )
            subset_of = torch.from_numpy(curriculum.stage_of(subsets, len(images)))
        if self.trainer.world_size > 1:
            subset_of = self.trainer.strategy.broadcast(subset_of, src=0)
        return subset_of.to(self.subset_of.device)

    def _write_curriculum(self, path: Path) -> None:
        record = {
            **self.setting,
            "seed": self._seed,
            "pca_dim": self.curriculum.pca_dim,
            "n_clusters": self.curriculum.n_clusters,
            "k_representatives": self.curriculum.k_representatives,
            "sizes": [len(s) for s in self._subsets],
            "stages": [
                {"stage": s.number, "name": s.name, "first_epoch": s.first_epoch, "epochs": s.epochs}
                for s in self.stages
            ],
            "subsets": [s.tolist() for s in self._subsets],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, record)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        stored = state_dict.get(prefix + "subset_of")
        if stored is not None and stored.shape != self.subset_of.shape:  # built before the data was known
            self.subset_of = torch.empty_like(stored, device=self.subset_of.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._bn_stale = self._encoder_bn_stale = False

    # -- training ------------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            torch.optim.Adam(self.generator.parameters(), lr=self.lr_generator, betas=self.betas, fused=True),
            torch.optim.Adam(self.encoder.parameters(), lr=self.encoder_fit.lr, betas=self.betas, fused=True),
        ]

    def on_train_epoch_start(self) -> None:
        stage = self.current_stage
        if self.current_epoch == stage.first_epoch:
            sizes = self._stage_sizes(stage)
            log.info(
                "incremental GLO: stage %d (%s), epochs %d-%d%s",
                stage.number,
                stage.name,
                stage.first_epoch,
                stage.first_epoch + stage.epochs - 1,
                f": current subset {sizes[0]} images, previous {sizes[1]}" if stage.kind == "subset" else "",
            )

    def _stage_sizes(self, stage: Stage) -> tuple[int, int]:
        """(current subset size, previous subsets' size) of a subset stage."""
        return len(self._subsets[stage.subset]), sum(len(s) for s in self._subsets[: stage.subset])

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        stage = self.current_stage
        logged: dict[str, Tensor | float] = {}
        if stage.kind == "subset":
            parts = self._subset_step(stage.subset)
            current, previous = self._stage_sizes(stage)
            logged = {"train/current_size": float(current), "train/previous_size": float(previous)}
        elif stage.kind == "whole":
            parts = self._whole_step(batch)
        else:
            parts = self._encoder_step(batch)
        loss = parts.pop("loss").detach()
        logged.update({f"train/{k}": v.detach() for k, v in parts.items()})
        logged[f"train/loss_{stage.name}"] = loss
        logged["train/stage"] = float(stage.number)
        logged["train/report_setting"] = float(self.setting["report_setting"])
        logged["train/loss"] = loss
        self.log_train_step(logged, batch.image.shape[0], batch_idx)
        return loss

    def _draw(self, pool: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """``n`` distinct entries of ``pool``, drawn on its device: no host-device copy per step."""
        return pool[torch.randperm(len(pool), generator=generator, device=pool.device)[:n]]

    def _subset_step(self, subset: int) -> dict[str, Tensor]:
        """GLO on subset ``subset`` with the codes of the earlier subsets frozen."""
        # Seeded by the step (and rank): a resumed run draws the same indices as an uninterrupted one.
        pool = self._subsets[subset]
        generator = torch.Generator(device=pool.device).manual_seed(
            self._seed * 1_000_003 + self.global_step * 1009 + self.global_rank
        )
        current = self._draw(pool, self.stage_losses.current_batch_size, generator)
        previous = (
            self._draw(self._previous[subset], self.stage_losses.previous_batch_size, generator)
            if subset > 0
            else current[:0]
        )
        x = self._train_images(torch.cat([previous, current]), self.device)
        z = self.codes.rows(current)  # (b, D): only these codes learn
        per_image = self.image_loss(
            self.generator(torch.cat([self.codes.weight[previous], z])), x
        )  # (p + b,)
        parts = {"loss_current": per_image[len(previous) :].mean()}
        if subset == 0:
            parts["loss"] = parts["loss_current"]
        else:
            parts["loss_previous"] = per_image[: len(previous)].mean()
            parts["loss"] = (
                self.stage_losses.previous_weight * parts["loss_previous"]
                + self.stage_losses.current_weight * parts["loss_current"]
            )
        self._decoder_update(parts["loss"], current, z)
        return parts

    def _whole_step(self, batch: Batch) -> dict[str, Tensor]:
        """All codes, with the continuity term L(G(z + eps), x)."""
        z = self.codes.rows(batch.index)
        if not self.stage_losses.continuity_weight:
            parts = {"loss_clean": self.image_loss(self.generator(z), batch.image).mean()}
            parts["loss"] = self.stage_losses.clean_weight * parts["loss_clean"]
        else:
            noisy = project(z + continuity_noise(z, self.stage_losses.continuity_sigma), self.projection)
            per_image = self.image_loss(self.generator(torch.cat([z, noisy])), batch.image.repeat(2, 1, 1, 1))
            clean, noisy_loss = per_image.chunk(2)
            parts = {"loss_clean": clean.mean(), "loss_continuity": noisy_loss.mean()}
            parts["loss"] = (
                self.stage_losses.clean_weight * clean.mean()
                + self.stage_losses.continuity_weight * noisy_loss.mean()
            )
        self._decoder_update(parts["loss"], batch.index, z)
        return parts

    def _encoder_step(self, batch: Batch) -> dict[str, Tensor]:
        """E(x) regresses the learned codes; generator and codes frozen."""
        error = self.encoder(batch.image) - self.codes.weight[batch.index]  # (B, D)
        parts = {"encoder_l1": error.abs().mean(), "encoder_l2": error.pow(2).mean()}
        parts["loss"] = (
            self.encoder_fit.l1_weight * parts["encoder_l1"]
            + self.encoder_fit.l2_weight * parts["encoder_l2"]
        )
        optimizer = self.optimizers()[1]
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(parts["loss"] + self._unused(self.generator))
        optimizer.step()
        self.encoder_steps += 1
        self._encoder_bn_stale = True
        return parts

    def _unused(self, net: nn.Module) -> Tensor | float:
        """0 * (sum of ``net``'s parameters) under DDP, so its reducer sees every parameter in every backward."""
        if self._world_size == 1:
            return 0.0
        return 0.0 * sum(p.sum() for p in net.parameters())

    def _decoder_update(self, loss: Tensor, index: Tensor, z: Tensor) -> None:
        """Step the generator, then the codes ``index`` (B,) with the gradient of their leaf copy ``z`` (B, D)."""
        optimizer = self.optimizers()[0]
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss + self._unused(self.encoder))
        optimizer.step()
        grad = z.grad
        if self._world_size > 1:  # every rank applies every rank's rows: the table stays whole everywhere
            index = self.all_gather(index).flatten(0, 1)
            grad = self.all_gather(grad).flatten(0, 1) / self._world_size  # DDP averages G's gradients too
        self.codes.update(index, grad, self.lr_codes)
        self._bn_stale = True

    def on_train_epoch_end(self) -> None:
        # Before ModelCheckpoint's epoch-end save: finished nets are saved calibrated, the decoder with its sampler.
        if self.current_epoch + 1 >= sum(s.epochs for s in self.stages):
            self.trainer.should_stop = True  # the schedule is done
        ends = self._training_ends()
        if self._bn_stale and (stage_at(self.stages, self.current_epoch + 1).kind == "encoder" or ends):
            self.finish_decoder()
        if self._encoder_bn_stale and ends:
            self.finish_encoder()

    def finish_decoder(self) -> None:
        """Generator batch-norm statistics recomputed on the codes, and the sampler fitted to them."""
        codes = self.codes.weight
        recalibrate_batch_norm(
            self.generator,
            shuffled_batches(len(codes), self._batch_size(), lambda i: codes[i.to(codes.device)]),
        )
        self.fit_sampler_unless_stopped(self.codes.fit_sampler)
        self._bn_stale = False

    def finish_encoder(self) -> None:
        """Encoder batch-norm statistics recomputed on the training images."""
        datamodule = self.trainer.datamodule

        def images(index: Tensor) -> Tensor:
            return datamodule.images("train", index, self.device)

        n = len(datamodule.split("train"))
        recalibrate_batch_norm(self.encoder, shuffled_batches(n, self._batch_size(), images))
        self._encoder_bn_stale = False

    @property
    def _world_size(self) -> int:
        return self._trainer.world_size if self._trainer is not None else 1

    def _batch_size(self) -> int:
        return getattr(self.trainer.datamodule, "batch_size", 256) if self._trainer is not None else 256

    def _training_ends(self) -> bool:
        trainer = self.trainer
        if trainer.should_stop or (trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps):
            return True
        return trainer.max_epochs not in (None, -1) and self.current_epoch + 1 >= trainer.max_epochs

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["incremental_glo"] = {
            "stage": self.current_stage.name,
            **self.setting,
            "sizes": [len(s) for s in self._subsets],
        }


__all__ = ["IncrementalGLO", "Stage", "continuity_noise"]
