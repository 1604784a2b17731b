"""FID, KID and precision/recall of model samples against a real split, on one feature extractor.

``GenerativeMetrics(features=ClassifierFeatures())`` gives ``fid_classifier@<sampler>``, ``kid_classifier@...``,
``precision_classifier@...`` and ``recall_classifier@...``; with ``InceptionFeatures()`` the same four with
``_inception`` (the feature sources are in ``genbench.evaluators.features``). Each value is recorded with its
protocol (N generated, N reference, reference split, resizer, feature extractor) under ``records["protocols"]``; a
metric that cannot be computed (no Inception weights, an unlabelled dataset for the classifier) is recorded under
``records["skipped"]`` with the reason.

Reference features (the first ``n_ref`` images of the split) are cached on disk by dataset, split, image size,
extractor (with a digest of its weights) and N, so every model and run reuses them. Under DDP each rank
generates and embeds 1/W of the samples (and of the reference images when they are not cached) and the
features are gathered on rank 0, which computes the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from genbench.evaluators.base import EvalContext
from genbench.evaluators.distributed import all_true, gather_rows, shard
from genbench.evaluators.features import FeatureSource, FeaturesUnavailable
from genbench.evaluators.sampling import sample_batches
from genbench.metrics import (
    FeatureExtractor,
    MetricProtocol,
    cached_features,
    extract_features,
    fid_from_features,
    kernel_inception_distance,
    manifold_radii,
    precision_recall,
)
from genbench.metrics.cache import feature_cache_path
from genbench.progress import Progress
from genbench.run.paths import feature_cache_dir

log = logging.getLogger(__name__)

SAMPLE_OFFSET = 5  # ctx.generator offset of the samples: every extractor scores the same samples
RECONSTRUCTION = "reconstruction"  # the pseudo-sampler of the reconstructions of training images
COLLAPSE_RATIO = 0.5  # a sampler whose recall is under this fraction of the reconstructions' is flagged
LOW_RECALL = 0.05  # reconstructions with less recall than this: the decoder itself is flagged


class GenerativeMetrics:
    """FID, KID (mean and std over subsets) and precision/recall (k nearest neighbours) on one extractor.

    ``n_gen`` samples (``model.sample`` in batches of ``batch_size`` from ``ctx.generator``) against the first
    ``n_ref`` images of ``reference_split`` (fewer if the split is smaller); periodic evaluations during
    training use ``periodic_n_gen`` / ``periodic_n_ref``. ``cache_dir`` holds reference features (null:
    ``$GENBENCH_CACHE/features`` or ``~/.cache/genbench/features``). With ``reconstructions`` the final evaluation
    also scores the reconstructions of the first ``n_gen`` training images (``@reconstruction``: the decoder's
    ceiling), reports each sampler's ``recall_ratio_<features>@<sampler>`` against it and flags a collapse.
    """

    sharded = True  # runs on every DDP rank: see genbench.evaluators.distributed

    uses_samples = True  # runs once more per extra sampler (eval.samplers)

    def __init__(
        self,
        features: FeatureSource,
        n_gen: int = 10000,
        n_ref: int = 10000,
        periodic_n_gen: int = 1000,
        periodic_n_ref: int = 1000,
        reference_split: str = "test",
        batch_size: int = 500,
        k: int = 3,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        cache_dir: str | None = None,
        reconstructions: bool = True,
    ) -> None:
        if min(n_gen, n_ref, periodic_n_gen, periodic_n_ref) <= k:
            raise ValueError(f"every N must exceed k={k} (precision/recall needs k neighbours)")
        self.features, self.reference_split = features, reference_split
        self.batch_size, self.k = batch_size, k
        self.n_gen, self.n_ref = n_gen, n_ref
        self.periodic_n_gen, self.periodic_n_ref = periodic_n_gen, periodic_n_ref
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self._cache_dir = cache_dir
        self.reconstructions = reconstructions

    @property
    def cache_dir(self) -> Path:
        return Path(self._cache_dir).expanduser() if self._cache_dir else feature_cache_dir()

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        name = self.features.name
        n_gen, n_ref = (self.n_gen, self.n_ref) if ctx.final else (self.periodic_n_gen, self.periodic_n_ref)
        n_ref = min(n_ref, len(ctx.datamodule.split(self.reference_split)))
        if n_ref <= self.k:
            return self._skip(
                ctx, f"{self.reference_split} split of {n_ref} images; need more than k={self.k}"
            )
        try:
            loaded, reason = self.features.load(ctx), None
        except FeaturesUnavailable as exc:
            loaded, reason = None, str(exc)
        if not all_true(loaded is not None, ctx):  # every rank skips, or none does
            return self._skip(ctx, reason or "the feature extractor is unavailable on another rank")

        started = time.perf_counter()
        real = self._reference(ctx, loaded, n_ref)  # (n_ref, F), rank 0 only
        ref_seconds, started = time.perf_counter() - started, time.perf_counter()
        fake = gather_rows(self._generated_features(ctx, loaded, n_gen), n_gen, ctx)  # (n_gen, F)
        gen_seconds = time.perf_counter() - started
        if ctx.rank != 0:
            if self.reconstructions and ctx.final and ctx.own_sampler:  # meet rank 0 in the gather
                gather_rows(self._reconstruction_features(ctx, loaded, n_gen), n_gen, ctx)
            return {}
        log.info(
            "%s features: %d reference in %.1fs, %d samples in %.1fs",
            name,
            n_ref,
            ref_seconds,
            n_gen,
            gen_seconds,
        )
        out = {**self._metrics(ctx, loaded, real, fake, ctx.sampler_name), **loaded.scalars}
        if self.reconstructions and ctx.final and ctx.own_sampler:
            started = time.perf_counter()
            recon = gather_rows(self._reconstruction_features(ctx, loaded, n_gen), n_gen, ctx)
            log.info("%s features of %d reconstructions in %.1fs", name, n_gen, time.perf_counter() - started)
            out.update(self._metrics(ctx, loaded, real, recon, RECONSTRUCTION))
        self._flag_low_recall(ctx, out)
        return out

    # -- features --------------------------------------------------------------------------------------------------
    def _reference(self, ctx: EvalContext, loaded: FeatureExtractor, n: int) -> Tensor | None:
        """Features of the split's first ``n`` images, from the cache or computed (sharded) and cached."""
        dm = ctx.datamodule
        key = {
            "dataset": dm.name,
            "split": self.reference_split,
            "image_size": dm.image_size,
            "extractor": loaded.cache_id,
            "n": n,
            "data": dm.source.cache_key(self.reference_split),
        }
        everything = range(n)
        if ctx.world_size == 1:
            if loaded.cache_id is None:  # an extractor nothing identifies: never cached
                return self._real_features(ctx, loaded, everything)
            return cached_features(key, lambda: self._real_features(ctx, loaded, everything), self.cache_dir)
        cacheable = loaded.cache_id is not None
        if cacheable and all_true(feature_cache_path(key, self.cache_dir).is_file(), ctx):
            # Every rank can read it; only rank 0 needs it (an unreadable file is recomputed there, alone).
            if ctx.rank != 0:
                return None
            return cached_features(key, lambda: self._real_features(ctx, loaded, everything), self.cache_dir)
        gathered = gather_rows(self._real_features(ctx, loaded, shard(n, ctx)), n, ctx)
        if ctx.rank != 0:
            return None
        return cached_features(key, lambda: gathered, self.cache_dir) if cacheable else gathered

    def _real_features(self, ctx: EvalContext, loaded: FeatureExtractor, rows: range) -> Tensor:
        images = ctx.datamodule.split(self.reference_split).images  # (N, C, H, W) uint8, CPU

        def batches() -> Iterator[Tensor]:
            what = f"{self.features.name} features of {len(rows)} {self.reference_split} images"
            with Progress(what, len(rows), unit="images") as progress:
                for start in range(rows.start, rows.stop, self.batch_size):
                    stop = min(start + self.batch_size, rows.stop)
                    yield images[start:stop].to(ctx.device).float().div_(255.0)  # (B, C, H, W) in [0, 1]
                    progress.update(stop - start)

        return extract_features(loaded.extract, batches())  # (len(rows), F), CPU

    def _reconstruction_features(self, ctx: EvalContext, loaded: FeatureExtractor, n: int) -> Tensor:
        """Features of this rank's share of the reconstructions of the first ``n`` training images (learned codes
        for GLO, encode-decode otherwise): what the decoder can do, the ceiling of every sampler."""
        n = min(n, len(ctx.datamodule.split("train")))
        rows = shard(n, ctx)

        def batches() -> Iterator[Tensor]:
            what = f"{self.features.name} features of {len(rows)} reconstructions"
            with Progress(what, len(rows), unit="images") as progress:
                for start in range(rows.start, rows.stop, self.batch_size):
                    index = torch.arange(start, min(start + self.batch_size, rows.stop), device=ctx.device)
                    x = ctx.datamodule.images("train", index, ctx.device)
                    yield ctx.model.reconstruct(x, index).float().clamp(0, 1)
                    progress.update(len(index))

        return extract_features(loaded.extract, batches())

    def _generated_features(self, ctx: EvalContext, loaded: FeatureExtractor, n: int) -> Tensor:
        """Features of this rank's share of ``n`` samples, each rank drawing from its own seeded generator."""
        mine = len(shard(n, ctx))
        if mine == 0:
            raise ValueError(f"n_gen={n} is smaller than the world size {ctx.world_size}")
        generator = ctx.generator(SAMPLE_OFFSET + 1009 * ctx.rank)
        what = f"{self.features.name} features of {mine} samples"
        return extract_features(loaded.extract, sample_batches(ctx, mine, self.batch_size, generator, what))

    # -- metrics ---------------------------------------------------------------------------------------------------
    def _metrics(
        self, ctx: EvalContext, loaded: FeatureExtractor, real: Tensor, fake: Tensor, sampler: str
    ) -> dict[str, float]:
        name = self.features.name
        real, fake = real.to(ctx.device), fake.to(ctx.device)  # (n_ref, F), (n_gen, F)
        protocol = MetricProtocol(
            n_gen=fake.shape[0],
            n_ref=real.shape[0],
            reference_split=self.reference_split,
            resizer=loaded.resizer,
            feature_extractor=loaded.description,
        ).to_dict()
        subset = min(self.kid_subset_size, fake.shape[0], real.shape[0])
        timed: dict[str, float] = {}

        started = time.perf_counter()
        fid = fid_from_features(real, fake)
        timed["fid"], started = time.perf_counter() - started, time.perf_counter()
        # generated features first, as torch-fidelity orders them (the subsets drawn depend on the order)
        kid = kernel_inception_distance(fake, real, self.kid_subsets, subset)
        timed["kid"], started = time.perf_counter() - started, time.perf_counter()
        pr = precision_recall(real, fake, self.k, real_radii=self._real_radii(ctx, real))
        timed["precision/recall"] = time.perf_counter() - started
        spent = ", ".join(f"{metric} {seconds:.1f}s" for metric, seconds in timed.items())
        log.info("%s metrics (%d vs %d): %s", name, fake.shape[0], real.shape[0], spent)

        out = {
            f"fid_{name}@{sampler}": fid,
            f"kid_{name}@{sampler}": kid.mean,
            f"kid_{name}_std@{sampler}": kid.std,
            f"precision_{name}@{sampler}": pr.precision,
            f"recall_{name}@{sampler}": pr.recall,
        }
        kid_protocol = {**protocol, "kid_subsets": self.kid_subsets, "kid_subset_size": subset}
        protocols = ctx.records.setdefault("protocols", {})
        protocols[f"fid_{name}@{sampler}"] = protocol
        protocols[f"kid_{name}@{sampler}"] = protocols[f"kid_{name}_std@{sampler}"] = kid_protocol
        for metric in ("precision", "recall"):
            protocols[f"{metric}_{name}@{sampler}"] = {**protocol, "k": self.k}
        return out

    def _real_radii(self, ctx: EvalContext, real: Tensor) -> Tensor:
        """The real set's k-NN radii, computed once per evaluation: every sampler and the reconstructions are
        scored against the same real features (checked equal, not assumed)."""
        key = f"real_radii_{self.features.name}_k{self.k}"
        cached = ctx.shared.get(key)
        if cached is not None and cached[0].shape == real.shape and torch.equal(cached[0], real):
            return cached[1]
        radii = manifold_radii(real, self.k)
        ctx.shared[key] = (real, radii)
        return radii

    def _flag_low_recall(self, ctx: EvalContext, out: dict[str, float]) -> None:
        """Compare the sampler's recall with the reconstructions' (the decoder's ceiling): a sampler far below
        it has collapsed onto part of the data; reconstructions without recall mean the decoder itself failed.
        Each finding goes to ``flags`` in metrics.json and the log; the ratio is a metric."""
        name, sampler = self.features.name, ctx.sampler_name
        recon = out.get(f"recall_{name}@{RECONSTRUCTION}", ctx.shared.get(f"recall_{name}@{RECONSTRUCTION}"))
        if recon is None:
            return
        ctx.shared[f"recall_{name}@{RECONSTRUCTION}"] = recon
        flags = ctx.records.setdefault("flags", {})
        if recon < LOW_RECALL and ctx.own_sampler:
            flags[f"reconstruction_recall_{name}"] = (
                f"the decoder's reconstructions of training images have {name} recall {recon:.3f}: no sampler "
                "can do better; the decoder (or its codes) did not learn the data (train longer, check the code "
                "learning rate)"
            )
            log.warning("%s", flags[f"reconstruction_recall_{name}"])
        recall = out.get(f"recall_{name}@{sampler}")
        if recall is None or recon <= 0:
            return
        out[f"recall_ratio_{name}@{sampler}"] = recall / recon
        protocols = ctx.records.setdefault("protocols", {})
        if f"recall_{name}@{sampler}" in protocols:
            protocols[f"recall_ratio_{name}@{sampler}"] = protocols[f"recall_{name}@{sampler}"]
        if recall < COLLAPSE_RATIO * recon:
            flags[f"sample_collapse_{name}@{sampler}"] = (
                f"{sampler} samples have {name} recall {recall:.3f}, under {COLLAPSE_RATIO:g}x the "
                f"reconstructions' {recon:.3f}: the samples cover a small part of what the decoder can draw "
                "(mode collapse); try another sampler (eval.samplers=[gaussian,gmm,imle])"
            )
            log.warning("%s", flags[f"sample_collapse_{name}@{sampler}"])

    def _skip(self, ctx: EvalContext, reason: str) -> dict[str, float]:
        """Record why this extractor's metrics are missing (under the FID's name) and return nothing."""
        if ctx.rank == 0:
            ctx.records.setdefault("skipped", {})[f"fid_{self.features.name}"] = (
                f"{reason} (kid/precision/recall_{self.features.name} skipped too)"
            )
        return {}
