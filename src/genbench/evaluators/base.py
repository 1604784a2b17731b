"""What an evaluator receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from genbench.interface import GenerativeModel


class Collectives(Protocol):
    """The two collectives sharded evaluators use; a Lightning ``Strategy`` provides both."""

    def all_gather(self, tensor: Tensor) -> Tensor:
        """(W, *tensor.shape): every rank's ``tensor``, in rank order."""
        ...

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` (any picklable object), on every rank."""
        ...


@dataclass
class EvalContext:
    """Everything an evaluator may use. ``final`` is False for periodic (smaller) evaluations during training.

    Under DDP every rank gets a context (``rank``, ``world_size``, ``collectives``), but only evaluators whose
    class sets ``sharded = True`` run on every rank (see ``genbench.evaluators.distributed``); the others run on
    rank 0 alone.
    """

    model: GenerativeModel
    datamodule: Any  # genbench.data.ImageDataModule (not imported: evaluators depend on its methods only)
    run_dir: Path
    device: torch.device
    seed: int = 0
    final: bool = True
    # Pictures written this evaluation, name -> (C, H, W) grid in [0, 1], for the loggers to pick up.
    pictures: dict[str, Tensor] = field(default_factory=dict)
    # Records that are not scalars (protocols, reasons for skipping), merged into metrics.json.
    records: dict[str, Any] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1
    collectives: Collectives | None = None  # None on one process
    # Where samples come from (genbench.evaluators.samplers.SampleSource): None is the model's own sampler.
    source: Any = None
    # Values evaluators hand to later ones in the same evaluation (never written): e.g. the recall of the
    # reconstructions, which each sampler's recall is compared with.
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def sampler_name(self) -> str:
        """The name sample-based metrics are keyed by (``<metric>@<sampler_name>``)."""
        return self.source.name if self.source is not None else self.model.sampler_name

    @property
    def own_sampler(self) -> bool:
        """Whether samples come from the model's own sampler (not one fitted to its codes after training)."""
        return self.source is None or self.source.own

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images (n, C, H, W) in [0, 1] from the evaluation's sampler."""
        if self.source is not None:
            return self.source.sample(n, generator)
        return self.model.sample(n, generator=generator)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A fresh generator on the device, so evaluation never consumes the training RNG."""
        return torch.Generator(device=self.device).manual_seed(self.seed * 7919 + offset)


class Evaluator(Protocol):
    """Computes some metrics and/or writes some pictures; returns flat scalar metrics. Evaluators that judge
    samples set the class attribute ``uses_samples = True``: they run once more per extra sampler."""

    def __call__(self, ctx: EvalContext) -> dict[str, float]: ...
