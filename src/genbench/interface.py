"""The one contract every genbench model honours.

Evaluation callbacks, the leaderboard and the benchmark talk to models only through this interface, never
through a concrete class. Images are float tensors in [0, 1] with shape (N, C, H, W) at every boundary;
latent codes are float tensors of shape (N, latent_dim).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

log = logging.getLogger(__name__)


class GenerativeModel(pl.LightningModule, abc.ABC):
    """A LightningModule that can encode, decode, sample and reconstruct images.

    Subclasses set ``self.latent_dim`` in ``__init__`` and implement the four methods below. The ABC makes a
    missing method fail at construction time, not deep inside an evaluation callback.
    """

    latent_dim: int
    # 'euclidean', or 'sphere' when codes live on the unit sphere (interpolations then follow great circles).
    latent_geometry: str = "euclidean"
    # Why torch.compile cannot run this model's training step, or None: `compile=true` then fails at start-up
    # with the reason, not deep inside the first step.
    compile_unsupported: str | None = None

    @abc.abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """Map images (N, C, H, W) in [0, 1] to codes (N, latent_dim).

        Models without an encoder (GLO) infer codes by optimisation here, or raise ``EncoderUnavailable``.
        """

    @abc.abstractmethod
    def decode(self, z: Tensor) -> Tensor:
        """Map codes (N, latent_dim) to images (N, C, H, W) in [0, 1]."""

    @abc.abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` images (n, C, H, W) in [0, 1] from the model's generative distribution.

        ``generator`` makes the draw reproducible without touching the global RNG (and so without
        perturbing training when called from a callback).
        """

    @abc.abstractmethod
    def reconstruct(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """Reconstruct images (N, C, H, W) in [0, 1].

        ``index`` holds the images' positions in the training split, when they come from it: GLO reconstructs
        training images from their learned codes rather than by inversion.
        """

    @property
    def sampler_name(self) -> str:
        """Name of the sampler ``sample`` uses; generative metrics are recorded under it."""
        return "prior"

    # Where ``decode``'s codes live, for samplers fitted to them after training: 'sphere' (draws are projected
    # onto the unit sphere) or 'none'.
    code_projection: str = "none"

    def sample_codes(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes (n, latent_dim) from the model's own generative distribution, in ``decode``'s space, on
        the model's device: ``sample(n, g)`` is ``decode(sample_codes(n, g))``."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its prior codes")

    def encoding(self) -> dict[str, Any]:
        """How ``encode`` maps unseen images to codes, for the protocol of metrics that depend on it."""
        return {"encode": "encoder"}

    @torch.no_grad()
    def training_codes(self, datamodule, batch_size: int = 500) -> Tensor:
        """Codes (N, latent_dim) of the datamodule's training images, in ``decode``'s space, on the device: what
        a density fitted after training ("ex-post density estimation") is fitted to. Models with an encoder
        encode (VAE: the posterior means; ALAE: w); models with learned codes override this to read them."""
        n = len(datamodule.split("train"))
        return torch.cat(
            [
                self.encode(datamodule.images("train", torch.arange(i, min(i + batch_size, n)), self.device))
                for i in range(0, n, batch_size)
            ]
        )

    def stop_requested(self) -> bool:
        """Whether a callback of the trainer (genbench's Preemption, on SIGTERM/SIGUSR1/SIGINT) asks the run to
        stop: long work inside a hook (fitting an IMLE sampler) polls this to stop promptly."""
        trainer = self._trainer
        if trainer is None:
            return False
        return any(
            bool(getattr(callback, "stop_requested", lambda: False)()) for callback in trainer.callbacks
        )

    def fit_sampler_unless_stopped(self, fit: Callable[..., None]) -> None:
        """``fit(should_stop=self.stop_requested)``; an interrupted fit leaves the sampler to be refitted on
        demand (the stop itself is raised by the callback that asked for it)."""
        from genbench.latent import SamplerFitInterrupted

        try:
            fit(should_stop=self.stop_requested)
        except SamplerFitInterrupted:
            log.warning("the sampler fit was interrupted: the run stops; the sampler is refitted when needed")

    def log_train_step(self, metrics: dict[str, Tensor | float], batch_size: int, batch_idx: int) -> None:
        """Log a training step's ``train/...`` scalars (``train/loss`` also on the progress bar), only on the steps
        whose values reach the loggers (every ``trainer.log_every_n_steps``) and on an epoch's last batch (so
        ``callback_metrics`` end each epoch fresh).

        Why: Lightning spends ~0.3 ms of Python per logged key per step (measured on a 2-core CPU), while the
        on-step values of the other steps are discarded unread: at 5-10 keys that is 5-15% of a small model's
        step. Outside a Trainer (the benchmark's plain loop, Fabric) every call is passed to the host.
        """
        self._watch_finite(metrics)
        if not self._logs_this_step(batch_idx):
            return
        bar = {k: v for k, v in metrics.items() if k == "train/loss"}
        if bar:
            self.log_dict(bar, prog_bar=True, batch_size=batch_size)
        rest = {k: v for k, v in metrics.items() if k != "train/loss"}
        if rest:
            self.log_dict(rest, batch_size=batch_size)

    def _watch_finite(self, metrics: dict[str, Tensor | float]) -> None:
        """Remember, on the device and without a host sync, the first global step at which each logged term was
        not finite; ``nonfinite_terms`` reads it (one sync) when the divergence check asks."""
        names = [k for k, v in metrics.items() if isinstance(v, Tensor)]
        if not names:
            return
        values = torch.stack([metrics[k].detach().float().reshape(()) for k in names])  # (K,)
        watch = getattr(self, "_finite_watch", None)
        if watch is None or watch[0] != names:
            first = torch.full((len(names),), -1, dtype=torch.long, device=values.device)
            watch = self._finite_watch = (names, first, torch.zeros_like(values))
        _, first, seen = watch
        step = self._trainer.global_step if self._trainer is not None else 0
        bad = ~torch.isfinite(values) & (first < 0)
        first.copy_(torch.where(bad, step, first))
        seen.copy_(torch.where(bad, values, seen))

    def nonfinite_terms(self) -> dict[str, tuple[int, float]]:
        """{logged name: (global step, value)} for each training term that has been NaN or infinite."""
        watch = getattr(self, "_finite_watch", None)
        if watch is None:
            return {}
        names, first, seen = watch
        steps, values = first.tolist(), seen.tolist()
        return {
            name: (step, value) for name, step, value in zip(names, steps, values, strict=True) if step >= 0
        }

    def _logs_this_step(self, batch_idx: int) -> bool:
        trainer = self._trainer
        if trainer is None or not trainer.training:
            return True
        if batch_idx + 1 >= trainer.num_training_batches:
            return True
        connector = getattr(trainer, "_logger_connector", None)  # Lightning's own "does this step log" rule
        return bool(getattr(connector, "should_update_logs", True))


class EncoderUnavailable(RuntimeError):
    """Raised by ``encode`` on models that cannot map an image to a code."""
