"""Feature sources: where evaluators get their :class:`~genbench.metrics.features.FeatureExtractor` for a run.

One interface for every evaluator that compares images in a feature space (``GenerativeMetrics``,
``NearestNeighbours``, ``PathLength``): a source has a ``name`` (the metric suffix) and ``load(ctx)``, which returns
a ready ``FeatureExtractor`` or raises ``FeaturesUnavailable`` saying why (missing weights, unlabelled data).

- ``ClassifierFeatures``: genbench's dataset classifier (``genbench.classifier``), trained on demand.
- ``InceptionFeatures``: torch-fidelity's InceptionV3 pool3 (weights by ``genbench.weights``); when they are missing
  the skip is said once per sweep (``say_once_per_sweep``) in one line.
- ``Pixels``: the images themselves.

Sharded evaluators call ``source.load(ctx)`` on every rank; evaluators that run on rank 0 alone call
``load_alone(source, ctx)``, which loads as one process (no collectives with ranks that never arrive).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Protocol

import torch

from genbench.classifier import DigitClassifier, TrainedClassifier, load_or_train, state_digest
from genbench.evaluators.base import EvalContext
from genbench.evaluators.distributed import broadcast
from genbench.metrics.features import (
    INCEPTION_EXTRACTOR,
    INCEPTION_RESIZER,
    INCEPTION_WEIGHTS_FILE,
    WEIGHTS_CONFIG_KEY,
    FeatureExtractor,
    InceptionWeightsUnavailable,
    inception_extractor,
    load_inception,
    pixel_features,
)

log = logging.getLogger(__name__)

INCEPTION_SKIPPED = (
    "Inception metrics (fid/kid/precision/recall_inception) skipped: no InceptionV3 weights. Supply them with "
    f"{WEIGHTS_CONFIG_KEY}=/path/to/{INCEPTION_WEIGHTS_FILE} (why: skipped.fid_inception in metrics.json)"
)
_said: set[str] = set()  # what this process has said once already (say_once_per_sweep)


class FeaturesUnavailable(RuntimeError):
    """This extractor cannot run here (missing weights, unlabelled data); the message says why."""


class FeatureSource(Protocol):
    """Builds the extractor for a context; ``name`` is the metric suffix ("classifier", "inception", "pixels")."""

    name: str

    def load(self, ctx: EvalContext) -> FeatureExtractor: ...


def load_alone(source: FeatureSource, ctx: EvalContext) -> FeatureExtractor:
    """``source.load`` as one process, for evaluators that run on rank 0 alone under DDP."""
    return source.load(dataclasses.replace(ctx, rank=0, world_size=1, collectives=None))


class Pixels:
    """The images themselves, flattened: a source that is always available."""

    name = "pixels"

    def load(self, ctx: EvalContext) -> FeatureExtractor:
        return pixel_features()


class ClassifierFeatures:
    """Penultimate features of genbench's dataset classifier (``genbench.classifier``), trained on demand.

    Only for labelled datasets. Under DDP rank 0 loads (or trains) it and broadcasts the weights.
    """

    name = "classifier"

    def __init__(self, cache_dir: str | None = None) -> None:
        self.cache_dir = cache_dir  # null: $GENBENCH_CACHE/classifiers or ~/.cache/genbench/classifiers
        self._loaded: tuple[tuple[str, int, str], TrainedClassifier] | None = None

    def load(self, ctx: EvalContext) -> FeatureExtractor:
        dm = ctx.datamodule
        if not dm.source.has_labels:
            raise FeaturesUnavailable(
                f"{dm.name} has no labels, so there is no classifier to take features from"
            )
        key = (dm.name, dm.image_size, str(ctx.device))
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = (key, self._load(ctx))
        trained = self._loaded[1]
        return FeatureExtractor(
            name=self.name,
            extract=trained.features,
            description=(
                f"genbench classifier {dm.name} {dm.image_size}px penultimate ({trained.net.arch['feature_dim']}), "
                f"test accuracy {trained.test_accuracy:.4f}, weights {trained.digest}"
            ),
            resizer=f"none (native {dm.image_size}x{dm.image_size})",
            digest=trained.digest,
            scalars={"classifier_test_accuracy": trained.test_accuracy},
        )

    def _load(self, ctx: EvalContext) -> TrainedClassifier:
        trained = load_or_train(ctx.datamodule, ctx.device, self.cache_dir) if ctx.rank == 0 else None
        if ctx.world_size == 1:
            return trained
        payload = None
        if trained is not None:
            state = {k: v.cpu() for k, v in trained.net.state_dict().items()}
            payload = (trained.net.arch, state, trained.test_accuracy)
        arch, state, test_accuracy = broadcast(payload, ctx)
        if trained is not None:
            return trained
        net = DigitClassifier(**arch)
        net.load_state_dict(state)
        return TrainedClassifier(net.to(ctx.device).eval(), test_accuracy, state_digest(state))


class InceptionFeatures:
    """Pool3 features of torch-fidelity's TF-compatible InceptionV3 (the FID standard).

    Weights: ``weights_path`` (eval.inception.weights_path), else the torch hub cache, else a download when
    ``download`` (``genbench.weights.resolve_weights``). When they are unavailable the metrics are skipped, and the
    skip is said in one line once per sweep (once per process outside a sweep); the full reason goes to
    ``skipped``. CPU cost: ~190 ms per image on 2 cores, so N = 10,000 takes ~30 minutes.
    """

    name = "inception"

    def __init__(self, weights_path: str | None = None, download: bool = True) -> None:
        self.weights_path, self.download = weights_path, download
        self._unavailable: str | None = None
        self._loaded: tuple[torch.nn.Module, str] | None = None

    def load(self, ctx: EvalContext) -> FeatureExtractor:
        if self._unavailable is not None:
            raise FeaturesUnavailable(self._unavailable)
        if self._loaded is None:
            try:
                inception = load_inception(self.weights_path, self.download)
            except InceptionWeightsUnavailable as exc:
                self._unavailable = str(exc)
                if ctx.rank == 0:  # one warning, not one per rank
                    say_once_per_sweep("inception-weights", INCEPTION_SKIPPED)
                log.debug("Inception weights unavailable: %s", exc)
                raise FeaturesUnavailable(self._unavailable) from exc
            self._loaded = (inception, state_digest(inception.state_dict()))
        inception, digest = self._loaded
        inception.to(ctx.device)
        return FeatureExtractor(
            self.name, inception_extractor(inception), INCEPTION_EXTRACTOR, INCEPTION_RESIZER, digest
        )


def sweep_dir() -> Path | None:
    """``hydra.sweep.dir`` in a Hydra multirun job, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return Path(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None


def say_once_per_sweep(key: str, message: str, logger: logging.Logger = log) -> bool:
    """Log ``message`` as a warning once per process and, in a multirun, once per sweep; True when it was said.

    The jobs of a sweep may be processes of their own (joblib, SLURM): the first to say it leaves a marker file
    ``.said-<key>`` in the sweep directory, and the others find it. Elsewhere it is logged at debug level.
    """
    if key in _said:
        logger.debug("%s", message)
        return False
    _said.add(key)
    folder = sweep_dir()
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            os.close(os.open(folder / f".said-{key}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            logger.debug("%s", message)
            return False
        except OSError:  # an unwritable sweep folder: better said twice than never
            pass
    logger.warning("%s", message)
    return True


__all__ = [
    "ClassifierFeatures",
    "FeatureSource",
    "FeaturesUnavailable",
    "InceptionFeatures",
    "Pixels",
    "load_alone",
    "say_once_per_sweep",
    "sweep_dir",
]
