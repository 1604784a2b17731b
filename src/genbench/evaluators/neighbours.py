"""``neighbours.png`` and the memorisation ratio: how close generated samples sit to the training images.

Every search is :func:`genbench.metrics.knn.knn` (exact, chunked matrix products on the device). The training
split is streamed through the device in chunks (uint8 on the CPU -> float on the device), so memory is bounded by
the queries plus one chunk, whatever the dataset's size (CelebA); a split whose floats fit in 1 GiB (MNIST) is kept
on the device between the passes. Two things depend on the data alone and are
cached on disk beside the generative metrics' reference features (``cache_dir``): the test images' pixel distances
to their nearest training image (half of the ratio), and the classifier features of the training split (the
figure's feature-space neighbours), in the classifier-features cache's own key format.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genbench.classifier import TrainedClassifier
from genbench.evaluators.base import EvalContext
from genbench.evaluators.pictures import save_grid
from genbench.metrics import cached_features, extract_features
from genbench.metrics.cache import feature_cache_path
from genbench.metrics.knn import knn
from genbench.progress import Progress
from genbench.run.paths import feature_cache_dir

log = logging.getLogger(__name__)

Features = Callable[[Tensor], Tensor]  # images (N, C, H, W) in [0, 1] -> features (N, F)
PIXEL_SPACE = "pixel L2, [0, 1] images"


class TrainingChunks:
    """The train split's flat pixels in [0, 1] as consecutive float chunks (n, C*H*W) on the device, for ``knn``.

    Re-iterable: the first pass streams the uint8 split through the device chunk by chunk and, when the floats take
    at most ``keep_bytes`` (MNIST's 60k: 188 MB), keeps them, so later passes skip the conversion; larger splits
    (CelebA) are streamed again on every pass and never held whole.
    """

    def __init__(self, ctx: EvalContext, chunk_size: int, keep_bytes: int = 1 << 30) -> None:
        self.train = ctx.datamodule.split("train").images  # (T, C, H, W) uint8, CPU
        self.device, self.chunk_size = ctx.device, chunk_size
        self.keep = self.train.numel() * 4 <= keep_bytes
        self._kept: list[Tensor] | None = None

    def __len__(self) -> int:
        return len(self.train)

    def __iter__(self) -> Iterator[Tensor]:
        if self._kept is not None:
            yield from self._kept
            return
        kept = []
        for start in range(0, len(self.train), self.chunk_size):
            chunk = self.train[start : start + self.chunk_size].to(self.device).float().div_(255.0).flatten(1)
            if self.keep:
                kept.append(chunk)
            yield chunk
        if self.keep:
            self._kept = kept


def draw_samples(ctx: EvalContext, n: int, batch_size: int, offset: int) -> Tensor:
    """``n`` model samples (n, C, H, W), drawn in batches from one seeded generator."""
    generator = ctx.generator(offset)
    return torch.cat(
        [ctx.model.sample(min(batch_size, n - s), generator=generator) for s in range(0, n, batch_size)]
    )


def extractor_id(extractor: Features) -> str | None:
    """The cache identity of a feature extractor (``classifier:<weights digest>``, as the classifier-features
    cache keys it) for a trained classifier's ``features``; None (not cacheable) for anything else."""
    owner = getattr(extractor, "__self__", None)
    return f"classifier:{owner.digest}" if isinstance(owner, TrainedClassifier) else None


class NearestNeighbours:
    """``neighbours.png`` and ``memorisation_ratio@<sampler>`` (pixel L2), on ``n_samples`` samples.

    Figure: one row per sample (``rows``): the sample, its ``k`` nearest training images by pixel L2, then, when
    a feature extractor is available, its ``k`` nearest by feature distance. ``features`` is a factory called
    with the context (so it can pick the dataset's classifier) that returns an images -> features callable, or
    None when none exists for this dataset; configure it with Hydra ``_partial_: true``.

    Ratio: mean distance from each sample to its nearest training image over the same for held-out test images
    (``n_samples`` of each, fewer if the test split is smaller). About 1: samples as novel as unseen data; near 0:
    samples copy training images. Periodic evaluations use ``periodic_n_samples``. ``cache_dir`` holds the
    data-only parts (null: ``$GENBENCH_CACHE/features`` or ``~/.cache/genbench/features``). The train split's
    features are computed in ``feature_batch_size`` batches: 128 runs the classifier twice as fast as 2048 on a
    2-core CPU (its activations stay in cache), and the features are bitwise the same at any size.
    """

    def __init__(
        self,
        rows: int = 8,
        k: int = 5,
        n_samples: int = 10000,
        periodic_n_samples: int = 1000,
        batch_size: int = 500,
        chunk_size: int = 2048,
        features: Callable[[EvalContext], Features | None] | None = None,
        cache_dir: str | None = None,
        feature_batch_size: int = 128,
    ) -> None:
        if rows < 1 or k < 1 or n_samples < rows or periodic_n_samples < rows:
            raise ValueError("need rows >= 1, k >= 1 and n_samples, periodic_n_samples >= rows")
        self.rows, self.k, self.n_samples, self.periodic_n_samples = rows, k, n_samples, periodic_n_samples
        self.batch_size, self.chunk_size, self.features = batch_size, chunk_size, features
        self._cache_dir, self.feature_batch_size = cache_dir, feature_batch_size

    @property
    def cache_dir(self) -> Path:
        return Path(self._cache_dir).expanduser() if self._cache_dir else feature_cache_dir()

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        n = self.n_samples if ctx.final else self.periodic_n_samples
        timed: dict[str, float] = {}
        started = time.perf_counter()
        samples = draw_samples(ctx, n, self.batch_size, offset=3).float()  # (S, C, H, W)
        timed["samples"], started = time.perf_counter() - started, time.perf_counter()
        test = ctx.datamodule.split("test").images[:n]  # (Q, C, H, W) uint8
        train = ctx.datamodule.split("train").images  # (T, C, H, W) uint8

        # pixel space: each sample's nearest training image (the ratio), then the k nearest of the figure's rows
        flat, pixels = samples.flatten(1), TrainingChunks(ctx, self.chunk_size)  # (S, D); the train split
        sample_dists, test_dists = self._nearest_pixel_distances(ctx, flat, test, pixels)  # (S,), (Q,) | None
        _, index = knn(flat[: self.rows], pixels, self.k, self.chunk_size)
        timed["pixel search"], started = time.perf_counter() - started, time.perf_counter()

        tiles = [samples[: self.rows, None], self._train_images(ctx, train, index)]
        extractor = self.features(ctx) if self.features is not None else None
        if extractor is not None:
            sample_feats = extractor(samples[: self.rows]).flatten(1)  # (rows, F)
            train_feats = self._train_features(ctx, extractor).to(sample_feats)  # (T, F)
            _, feat_index = knn(sample_feats, train_feats, self.k, self.chunk_size)
            tiles.append(self._train_images(ctx, train, feat_index))
            timed["feature neighbours"] = time.perf_counter() - started
        else:
            log.info("neighbours.png: no feature extractor, pixel-space neighbours only")
        figure = torch.cat(tiles, dim=1)  # (rows, 1 + k [+ k], C, H, W)
        save_grid(ctx, "neighbours", figure.flatten(0, 1), nrow=figure.shape[1])
        spent = ", ".join(f"{what} {seconds:.1f}s" for what, seconds in timed.items())
        log.info("neighbours (%d samples, %d test vs %d train): %s", n, len(test), len(train), spent)

        out: dict[str, float] = {}
        if test_dists is not None:
            name = f"memorisation_ratio@{ctx.model.sampler_name}"
            out[name] = float(sample_dists.mean() / test_dists.mean())
            ctx.records.setdefault("protocols", {})[name] = {
                "n_samples": n,
                "n_test": len(test),
                "n_train": len(train),
                "distance": PIXEL_SPACE,
            }
        else:
            ctx.records.setdefault("skipped", {})["memorisation_ratio"] = "no test split to compare with"
        return out

    def _nearest_pixel_distances(
        self, ctx: EvalContext, samples: Tensor, test: Tensor, pixels: TrainingChunks
    ) -> tuple[Tensor, Tensor | None]:
        """Pixel distance from each sample (S, D) and each test image (Q, C, H, W) uint8 to its nearest training
        image: (S,) and (Q,) (None without test images). The test images' distances come from the cache when
        there, else from the same pass over the training split as the samples'."""
        if not len(test):
            return self._nearest_pixel_distance(pixels, samples), None
        test_flat = test.to(ctx.device).flatten(1).float().div_(255.0)  # (Q, D)
        key = self._test_distance_key(ctx, len(test))
        if feature_cache_path(key, self.cache_dir).is_file():  # (an unreadable file is recomputed alone)
            test_dists = cached_features(
                key, lambda: self._nearest_pixel_distance(pixels, test_flat), self.cache_dir
            )
            return self._nearest_pixel_distance(pixels, samples), test_dists.to(samples)
        both = self._nearest_pixel_distance(pixels, torch.cat([samples, test_flat]))  # (S + Q,)
        cached_features(key, lambda: both[len(samples) :].clone(), self.cache_dir)
        return both[: len(samples)], both[len(samples) :]

    def _nearest_pixel_distance(self, pixels: TrainingChunks, queries: Tensor) -> Tensor:
        """Pixel distance (Q,) from each query (Q, D) to its nearest training image; progress every ~10 s."""
        what = f"neighbours: pixel search of {len(queries)} images"
        with Progress(what, len(pixels), unit="training images", logger=log) as progress:
            return knn(queries, pixels, 1, self.chunk_size, on_block=progress)[0][:, 0]

    def _test_distance_key(self, ctx: EvalContext, n_test: int) -> dict[str, Any]:
        dm = ctx.datamodule
        return {
            "what": "nearest-train distances",
            "dataset": dm.name,
            "image_size": dm.image_size,
            "distance": PIXEL_SPACE,
            "split": "test",
            "n": n_test,
            "data": dm.source.cache_key("test"),
            "reference": {
                "split": "train",
                "n": len(dm.split("train")),
                "data": dm.source.cache_key("train"),
            },
        }

    def _train_features(self, ctx: EvalContext, extractor: Features) -> Tensor:
        """``extractor`` features (T, F) of the whole train split, in ``feature_batch_size`` batches under no_grad;
        from and into the classifier-features cache when the extractor is a trained classifier's."""
        dm = ctx.datamodule
        train = dm.split("train").images

        def compute() -> Tensor:
            progress = Progress(
                "neighbours: features of the train split", len(train), unit="images", logger=log
            )

            def batches() -> Iterator[Tensor]:
                for start in range(0, len(train), self.feature_batch_size):
                    batch = train[start : start + self.feature_batch_size]
                    yield batch.to(ctx.device).float().div_(255.0)
                    progress(len(batch))

            return extract_features(lambda x: extractor(x).flatten(1), batches())  # (T, F), CPU

        ident = extractor_id(extractor)
        if ident is None:
            return compute()
        key = {
            "dataset": dm.name,
            "split": "train",
            "image_size": dm.image_size,
            "extractor": ident,
            "n": len(train),
            "data": dm.source.cache_key("train"),
        }
        return cached_features(key, compute, self.cache_dir)

    @staticmethod
    def _train_images(ctx: EvalContext, train: Tensor, index: Tensor) -> Tensor:
        """Training images at index (R, k) -> (R, k, C, H, W) floats in [0, 1] on the device."""
        return train[index.cpu()].to(ctx.device).float().div_(255.0)
