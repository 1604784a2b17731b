"""Incremental GLO's settings, grouped as in the report: the curriculum, the epochs of each stage, the losses of
the decoder stages, and the encoder's fit. Each group is one config node (``model.curriculum.n_stages``, ...)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Curriculum:
    """Features -> PCA (``pca_dim``) -> k-means (``n_clusters``) -> the ``k_representatives`` images nearest each
    centroid form a subset; ``n_stages - 1`` rounds, the rest is the last subset. Written to ``file``."""

    n_stages: int = 2
    n_clusters: int = 32
    k_representatives: int = 4
    pca_dim: int = 32
    feature_batch_size: int = 256
    file: str | None = None


@dataclass(frozen=True)
class StageEpochs:
    """Trainer epochs of each subset stage, of the whole-set stage and of the encoder stage."""

    subset_epochs: int = 1
    final_epochs: int = 2
    encoder_epochs: int = 1


@dataclass(frozen=True)
class StageLosses:
    """Subset stage k > 1: previous_weight * L(previous subsets, codes frozen) + current_weight * L(subset k), with
    ``previous_batch_size`` + ``current_batch_size`` images drawn per step. Whole-set stage: clean_weight *
    L(G(z), x) + continuity_weight * L(G(z + eps), x), eps ~ N(0, continuity_sigma^2 I)."""

    previous_batch_size: int = 35
    current_batch_size: int = 50
    previous_weight: float = 1.0
    current_weight: float = 1.0
    clean_weight: float = 1.0
    continuity_weight: float = 0.7
    continuity_sigma: float = 0.3


@dataclass(frozen=True)
class EncoderFit:
    """The encoder stage: E(x) regresses each image's code with l1_weight * L1 + l2_weight * L2, Adam at ``lr``."""

    lr: float = 1e-3
    l1_weight: float = 1.0
    l2_weight: float = 1.0


def settings(kind: type[T], value: T | Mapping[str, Any] | None) -> T:
    """``value`` as a ``kind``: itself, the defaults (None), or built from a mapping (a Hydra config node), whose
    unknown keys are refused by name."""
    if value is None:
        return kind()
    if isinstance(value, kind):
        return value
    known = {f.name for f in fields(kind)}  # type: ignore[arg-type]
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(
            f"{kind.__name__} has no setting {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return kind(**dict(value))


__all__ = ["Curriculum", "EncoderFit", "StageEpochs", "StageLosses", "settings"]
