"""The one contract every genbench model honours.

Evaluation callbacks, the leaderboard and the benchmark talk to models only through this interface, never
through a concrete class. Images are float tensors in [0, 1] with shape (N, C, H, W) at every boundary;
latent codes are float tensors of shape (N, latent_dim).
"""

from __future__ import annotations

import abc

import pytorch_lightning as pl
import torch
from torch import Tensor


class GenerativeModel(pl.LightningModule, abc.ABC):
    """A LightningModule that can encode, decode, sample and reconstruct images.

    Subclasses set ``self.latent_dim`` in ``__init__`` and implement the four methods below. The ABC makes a
    missing method fail at construction time, not deep inside an evaluation callback.
    """

    latent_dim: int
    # 'euclidean', or 'sphere' when codes live on the unit sphere (interpolations then follow great circles).
    latent_geometry: str = "euclidean"

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


class EncoderUnavailable(RuntimeError):
    """Raised by ``encode`` on models that cannot map an image to a code."""
