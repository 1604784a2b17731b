"""VAE (Kingma & Welling, 2014) and MMD-VAE (InfoVAE, Zhao, Song & Ermon, 2019) as one class.

The two differ only in the regulariser on the codes, so MMD-VAE is a config of this class (conf/model/mmd_vae.yaml):
- ``divergence="kl"``: stochastic encoder q(z|x) = N(mu, sigma^2), reparameterised, analytic KL to N(0, I).
- ``divergence="mmd"``: deterministic encoder z = mu(x), MMD between the batch's codes and N(0, I) draws.
The likelihood is Bernoulli (sigmoid cross-entropy on logits) or Gaussian (squared error on sigmoid outputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from genbench import losses
from genbench.data.batch import Batch
from genbench.interface import GenerativeModel


class VAE(GenerativeModel):
    """Convolutional VAE / MMD-VAE. ``encoder`` and ``decoder`` are partial nets completed with the latent size."""

    def __init__(
        self,
        encoder: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        latent_dim: int = 16,
        divergence: str = "kl",
        likelihood: str = "bernoulli",
        beta: float = 1.0,
        mmd_kernel: str = "gaussian",
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        super().__init__()
        if divergence not in ("kl", "mmd"):
            raise ValueError(f"divergence must be 'kl' or 'mmd', got {divergence!r}")
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        if mmd_kernel not in losses.KERNELS:
            raise ValueError(f"mmd_kernel must be one of {sorted(losses.KERNELS)}, got {mmd_kernel!r}")
        self.latent_dim = latent_dim
        self.divergence, self.likelihood, self.beta, self.mmd_kernel = (
            divergence,
            likelihood,
            beta,
            mmd_kernel,
        )
        self.lr, self.betas = lr, tuple(betas)
        heads = 2 if divergence == "kl" else 1  # (mu, logvar) or mu only
        self.encoder = encoder(out_features=heads * latent_dim)
        self.decoder = decoder(in_features=latent_dim)

    # -- the contract --------------------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        return self._posterior(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(z))

    def sample_codes(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """The prior N(0, I)."""
        z = torch.randn(
            n,
            self.latent_dim,
            generator=generator,
            device=self.device if generator is None else generator.device,
        )
        return z.to(self.device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.decode(self.sample_codes(n, generator))

    def reconstruct(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        return self.decode(self.encode(x))

    # -- training ------------------------------------------------------------------------------------------------
    def _posterior(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(mu, logvar) for the KL VAE, (z, None) for the deterministic MMD encoder. Each (N, D)."""
        h = self.encoder(x)
        if self.divergence == "kl":
            mu, logvar = h.chunk(2, dim=1)
            return mu, logvar.clamp(-30.0, 20.0)
        return h, None

    def _reconstruction_loss(self, logits: Tensor, x: Tensor) -> Tensor:
        if self.likelihood == "bernoulli":
            return losses.bernoulli_nll(logits, x)
        return losses.squared_error(torch.sigmoid(logits), x)

    def _losses(self, x: Tensor) -> dict[str, Tensor]:
        mu, logvar = self._posterior(x)
        if self.divergence == "kl":
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            reg = losses.gaussian_kl(mu, logvar).mean()
        else:
            z = mu
            reg = losses.mmd(z, torch.randn_like(z), self.mmd_kernel)
        recon = self._reconstruction_loss(self.decoder(z), x).mean()
        loss = recon + self.beta * reg
        out = {"loss": loss, "recon": recon, self.divergence: reg}
        if self.divergence == "kl":
            out["elbo"] = -(
                recon + reg
            )  # the ELBO per image (nats) when beta = 1 and the likelihood is Bernoulli
        return out

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        parts = self._losses(batch.image)
        loss = parts.pop("loss")
        size = batch.image.shape[0]
        logged = {"train/loss": loss.detach(), **{f"train/{k}": v.detach() for k, v in parts.items()}}
        self.log_train_step(logged, size, batch_idx)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        parts = self._losses(batch.image)
        self.log_dict(
            {f"val/{k}": v for k, v in parts.items()}, sync_dist=True, batch_size=batch.image.shape[0]
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, betas=self.betas, fused=True)
