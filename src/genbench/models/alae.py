"""MLP-ALAE: the Adversarial Latent Autoencoder (Pidhorskyi, Adjeroh & Doretto, CVPR 2020), fully connected.

The GAN generator is split into a mapping F: z -> w and a generator G: w -> x; the discriminator into an encoder
E: x -> w and a head D: w -> logit. Each batch makes three updates (Lightning manual optimisation, two Adams):
1. discriminator, optimiser (E, D): softplus(D(E(G(F(z))))) + softplus(-D(E(x))) + r1_gamma / 2 * R1,
   R1 = E_x ||d D(E(x)) / d x||^2 on the reals;
2. generator, optimiser (F, G): softplus(-D(E(G(F(z)))));
3. latent autoencoder, both optimisers: mean ||w - E(G(w))||^2 with w = F(z) and the target w detached, so G, E
   and (through G's input) F learn here, as in the official code; ``autoencoder_trains_mapping: false`` keeps F
   out (w detached everywhere, only G and E learn).
Networks work on signed pixels in [-1, 1] as the official code does. ``decode`` maps G's output to [0, 1] by
(g + 1) / 2 and clamps there. G's own output is clipped to [-1, 1] by default (``generator.output: clamp``;
official: linear), so the critic judges the images that are shown and scored (see conf/model/alae.yaml for why and
the measurements).

Averaged weights (the official "Gs", ``model_s`` in train_alae.py): after every batch an exponential moving
average of F, G and E moves towards the trained nets, avg <- decay * avg + (1 - decay) * live, with the official
decay 0.5 ** (batch / 10,000) (a half-life of 10k images; 0.99117 at batch 128) and no ramp-up. ``sample``,
``decode``, ``encode`` and ``reconstruct`` use the averages, as the official sample grids, reconstruction figures
and FID/PPL scripts do (they load the ``*_s`` nets); the training steps use the live nets. The averaged nets
are a submodule (``ema``), so checkpoints hold them and a resumed run continues the same average. Two
departures: the official average starts from a separately initialised copy, here from the live nets (the
difference has decayed to 1e-4 after 1,000 batches either way); D is not averaged (nothing samples or
reconstructs through it). ``ema_decay: null`` (or 0) turns the average off: the contract then uses the live nets.

Against the official configuration (mnist_fc): D has no activation between its layers and F learns in the
latent-autoencoder step, as there; four departures were measured better and are the config's defaults
(conf/model/alae.yaml): E's output is linear (official: leaky ReLU), G's output layer starts at 0.1 x He
(official: 1 x), G's output is clipped to the data's range (official: linear) and R1's gamma is 1 (official:
10). At 1,000 batches of 128 (seed 0, averaged nets, 10k test images) test reconstruction MSE on Fashion-MNIST /
MNIST: official settings plus EMA 0.0795 / 0.0982; linear E 0.0496 / 0.0648; both 0.0379 / 0.0525 (0.44 / 0.78 of
the test set's pixel variance).
The clip and the lighter R1 then remove most of the salt-and-pepper speckle those runs still had (MNIST, 3 epochs,
prior FID 53.7 -> 20.9, recall 0.009 -> 0.185: conf/model/alae.yaml). A plain-PyTorch loop of the official code
(experiments/alae_plain_loop.py, no Lightning) reached 0.140 / 0.152 at the same batches. Single runs: GAN
training at this budget varies from seed to seed.

Note: Lightning counts every ``optimizer.step()`` as a global step, so ``global_step`` grows by 4 a batch here
(``OPTIMIZER_STEPS_PER_BATCH``); genbench's ``trainer.max_steps`` counts batches (``run.callbacks.BatchLimit``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbench.data.batch import Batch
from genbench.interface import GenerativeModel

log = logging.getLogger(__name__)

OPTIMIZER_STEPS_PER_BATCH = 4  # (E, D) + (F, G) + both in the latent-autoencoder step
OFFICIAL_EMA_DECAY = 0.5 ** (128 / 10_000)  # train_alae.py: 0.5 ** (batch size / 10k images) at batch 128
AVERAGED_NETS = ("mapping", "generator", "encoder")  # what sample / decode / encode / reconstruct use


def r1_penalty(scores: Tensor, reals: Tensor) -> Tensor:
    """Mean over the batch of ||d score_i / d real_i||^2. scores (N,) computed from reals (N, ...) with requires_grad.

    Summing the scores gives each sample's own gradient because samples do not interact. create_graph=True so the
    penalty can itself be differentiated (it is part of the discriminator's loss).
    """
    (grad,) = torch.autograd.grad(scores.sum(), reals, create_graph=True)
    return grad.pow(2).flatten(1).sum(dim=1).mean()


@torch.no_grad()
def ema_update_(averaged: nn.Module, live: nn.Module, decay: float) -> None:
    """In place, every parameter and floating buffer: avg <- decay * avg + (1 - decay) * live."""
    mine = [*averaged.parameters(), *(b for b in averaged.buffers() if b.is_floating_point())]
    theirs = [*live.parameters(), *(b for b in live.buffers() if b.is_floating_point())]
    if len(mine) != len(theirs):
        raise ValueError(f"averaged and live nets differ: {len(mine)} vs {len(theirs)} tensors")
    torch._foreach_lerp_(mine, theirs, 1.0 - decay)


def to_signed(x: Tensor) -> Tensor:
    """[0, 1] contract pixels -> [-1, 1] network pixels."""
    return x * 2.0 - 1.0


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] network pixels (unbounded G output) -> [0, 1] contract pixels."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


class ALAE(GenerativeModel):
    """MLP-ALAE. The four nets are partial configs completed here with the latent size (z and w share it)."""

    def __init__(
        self,
        mapping: Callable[..., nn.Module],
        generator: Callable[..., nn.Module],
        encoder: Callable[..., nn.Module],
        discriminator: Callable[..., nn.Module],
        latent_dim: int = 50,
        r1_gamma: float = 10.0,
        lr_encoder: float = 0.002,
        lr_generator: float = 0.002,
        betas: tuple[float, float] = (0.0, 0.99),
        w_avg_beta: float = 0.995,
        truncation_psi: float | None = None,
        ema_decay: float | None = OFFICIAL_EMA_DECAY,
        autoencoder_trains_mapping: bool = True,
    ) -> None:
        super().__init__()
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be null or in [0, 1), got {ema_decay}")
        if not 0.0 <= w_avg_beta < 1.0:
            raise ValueError(f"w_avg_beta must be in [0, 1), got {w_avg_beta}")
        if truncation_psi is not None and not 0.0 <= truncation_psi <= 1.0:
            raise ValueError(f"truncation_psi must be null or in [0, 1], got {truncation_psi}")
        self.automatic_optimization = False
        self.latent_dim = latent_dim
        self.compile_unsupported = (
            "its discriminator step differentiates the R1 penalty, a gradient of D(E(x)) with respect to x "
            "(double backward), which torch.compile's aot_autograd does not support"
        )
        self.r1_gamma, self.lr_encoder, self.lr_generator, self.betas = (
            r1_gamma,
            lr_encoder,
            lr_generator,
            tuple(betas),
        )
        self.w_avg_beta, self.truncation_psi = w_avg_beta, truncation_psi
        self.autoencoder_trains_mapping = autoencoder_trains_mapping
        self.mapping = mapping(features=latent_dim)  # F
        self.generator = generator(in_features=latent_dim)  # G
        self.encoder = encoder(out_features=latent_dim)  # E
        self.discriminator = discriminator(in_features=latent_dim)  # D
        # Running mean of w = F(z) during training, the truncation centre; a buffer, so it is saved in checkpoints.
        self.register_buffer("w_avg", torch.zeros(latent_dim))
        # The averaged F, G, E (frozen copies; state-dict keys ema.mapping..., ema.generator..., ema.encoder...).
        self.ema_decay = ema_decay or None  # 0 means off, as null does
        self.ema: nn.ModuleDict | None = None
        if self.ema_decay is not None:
            self.ema = nn.ModuleDict({name: copy.deepcopy(getattr(self, name)) for name in AVERAGED_NETS})
            self.ema.requires_grad_(False)
        self.register_load_state_dict_pre_hook(_fill_or_drop_averages)

    def _net(self, name: str) -> nn.Module:
        """The averaged copy of ``name`` when averaging is on, else the live net: what the contract uses."""
        return self.ema[name] if self.ema is not None else getattr(self, name)

    # -- the contract --------------------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        return self._net("encoder")(to_signed(x))

    def decode(self, z: Tensor) -> Tensor:
        """Codes here are w (the encoder's space), not the prior's z."""
        return to_unit(self._net("generator")(z))

    def sample_codes(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """w = F(z), z ~ N(0, I), (n, latent_dim), truncated towards the running mean when ``truncation_psi``."""
        z = torch.randn(
            n,
            self.latent_dim,
            generator=generator,
            device=self.device if generator is None else generator.device,
        )
        w = self._net("mapping")(z.to(self.device))
        if self.truncation_psi is not None:
            w = torch.lerp(self.w_avg, w, self.truncation_psi)  # w_avg + psi * (w - w_avg)
        return w

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.decode(self.sample_codes(n, generator))

    def reconstruct(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        return self.decode(self.encode(x))

    # -- the three updates ---------------------------------------------------------------------------------------
    @contextmanager
    def _trainable(self, *nets: nn.Module) -> Iterator[None]:
        """Only ``nets`` get gradients inside the block (the others still pass gradients through)."""
        everything = (self.mapping, self.generator, self.encoder, self.discriminator)
        saved = [[p.requires_grad for p in net.parameters()] for net in everything]
        for net in everything:
            net.requires_grad_(any(net is t for t in nets))
        try:
            yield
        finally:
            for net, flags in zip(everything, saved, strict=True):
                for p, flag in zip(net.parameters(), flags, strict=True):
                    p.requires_grad_(flag)

    def _draw_w(self, n: int) -> Tensor:
        """w = F(z), z ~ N(0, I), (n, latent_dim). In training, every draw moves the running average of w (as in the
        official code, three times per batch)."""
        w = self.mapping(torch.randn(n, self.latent_dim, device=self.device))
        if self.training:
            with torch.no_grad():
                self.w_avg.lerp_(w.detach().mean(dim=0), 1.0 - self.w_avg_beta)
        return w

    def _critic(self, x_signed: Tensor) -> Tensor:
        """D(E(x)): real/fake logits (N,) for signed images."""
        return self.discriminator(self.encoder(x_signed))

    def discriminator_loss(self, x: Tensor) -> dict[str, Tensor]:
        """Step 1's loss for reals x (N, C, H, W) in [0, 1]; R1 is taken w.r.t. the signed pixels E sees."""
        with torch.no_grad():
            fake = self.generator(self._draw_w(x.shape[0]))
        reals = to_signed(x).detach().requires_grad_(True)
        real_scores = self._critic(reals)
        r1 = r1_penalty(real_scores, reals)
        gan = F.softplus(self._critic(fake)).mean() + F.softplus(-real_scores).mean()
        return {"loss_d": gan + 0.5 * self.r1_gamma * r1, "r1": r1}

    def generator_loss(self, n: int) -> Tensor:
        """Step 2's non-saturating loss on n fresh samples."""
        return F.softplus(-self._critic(self.generator(self._draw_w(n)))).mean()

    def autoencoder_loss(self, n: int) -> Tensor:
        """Step 3: latent reciprocity mean ||w - E(G(w))||^2 (mean over batch and dims, as the official code). The
        target is always detached; the input carries F's gradient when ``autoencoder_trains_mapping``."""
        with torch.set_grad_enabled(self.autoencoder_trains_mapping and torch.is_grad_enabled()):
            w = self._draw_w(n)
        return (self.encoder(self.generator(w)) - w.detach()).pow(2).mean()

    def _discriminator_step(self, x: Tensor, opt_ed) -> dict[str, Tensor]:
        with self._trainable(self.encoder, self.discriminator):
            parts = self.discriminator_loss(x)
            opt_ed.zero_grad()
            self.manual_backward(parts["loss_d"])
            opt_ed.step()
        return parts

    def _generator_step(self, n: int, opt_fg) -> Tensor:
        with self._trainable(self.mapping, self.generator):
            loss = self.generator_loss(n)
            opt_fg.zero_grad()
            self.manual_backward(loss)
            opt_fg.step()
        return loss

    def _autoencoder_step(self, n: int, opt_ed, opt_fg) -> Tensor:
        # Both optimisers step, as in the official code; D (and F when kept out) has no gradient, so Adam skips it.
        trained = (self.generator, self.encoder) + (
            (self.mapping,) if self.autoencoder_trains_mapping else ()
        )
        with self._trainable(*trained):
            loss = self.autoencoder_loss(n)
            opt_ed.zero_grad()
            opt_fg.zero_grad()
            self.manual_backward(loss)
            opt_ed.step()
            opt_fg.step()
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        opt_ed, opt_fg = self.optimizers()
        n = batch.image.shape[0]
        parts = self._discriminator_step(batch.image, opt_ed)
        losses = {
            "loss_d": parts["loss_d"].detach(),
            "r1": parts["r1"].detach(),
            "loss_g": self._generator_step(n, opt_fg).detach(),
            "loss_ae": self._autoencoder_step(n, opt_ed, opt_fg).detach(),
        }
        if self.ema is not None:
            for name in AVERAGED_NETS:
                ema_update_(self.ema[name], getattr(self, name), self.ema_decay)
        self.log_train_step({f"train/{k}": v for k, v in losses.items()}, n, batch_idx)
        return losses

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x = batch.image
        recon_mse = (self.reconstruct(x) - x).pow(2).mean()
        self.log_dict(
            {"val/recon_mse": recon_mse, "val/loss_ae": self.autoencoder_loss(x.shape[0])},
            sync_dist=True,
            batch_size=x.shape[0],
        )

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        encoder_side = [*self.encoder.parameters(), *self.discriminator.parameters()]
        generator_side = [*self.mapping.parameters(), *self.generator.parameters()]
        return [
            torch.optim.Adam(encoder_side, lr=self.lr_encoder, betas=self.betas, fused=True),
            torch.optim.Adam(generator_side, lr=self.lr_generator, betas=self.betas, fused=True),
        ]


def _fill_or_drop_averages(
    module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors
) -> None:
    """Checkpoints from before the averaged nets existed (or written with them off) still load: missing averages
    start from the checkpoint's live nets, with a warning; averages the model does not keep are dropped."""
    ema_prefix = f"{prefix}ema."
    stored = [k for k in state_dict if k.startswith(ema_prefix)]
    if module.ema is None:
        for key in stored:
            del state_dict[key]
        return
    if stored:
        return
    copied = 0
    for name in AVERAGED_NETS:
        for key in [k for k in state_dict if k.startswith(f"{prefix}{name}.")]:
            state_dict[ema_prefix + key[len(prefix) :]] = state_dict[key].clone()
            copied += 1
    if copied:
        log.warning("checkpoint has no averaged weights (ema.*): the average starts from its trained nets")
