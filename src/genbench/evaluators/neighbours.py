"""``neighbours.png`` and the memorisation ratio: how close generated samples sit to the training images.

Every search is :func:`genbench.metrics.knn.knn` (exact, chunked matrix products on the device). The training
split is streamed through the device in chunks (uint8 on the CPU -> float on the device), so memory is bounded by
the queries plus one chunk, whatever the dataset's size (CelebA); a split whose floats fit in 1 GiB (MNIST) is kept
on the device between the passes. Two things depend on the data alone and are cached on disk beside the generative
metrics' reference features (``cache_dir``): the test images' pixel distances to their nearest training image (half
of the ratio), and the feature extractor's features of the training split (the figure's feature-space neighbours),
in the reference-feature cache's key format. The ratio itself is
:func:`genbench.metrics.neighbours.memorisation_ratio_of_distances`.

The picture: one row per sample; the sample, then a block of its ``k`` nearest training images in pixel space, then
(when there is a feature extractor) a block of its ``k`` nearest in feature space, the blocks parted by a grey
divider and headed by what they are, each neighbour's distance under it, all upscaled to ``min_cell`` px cells.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genbench.drawing import BACKGROUND, TEXT, font, line_height, with_caption, wrap
from genbench.evaluators.base import EvalContext
from genbench.evaluators.features import FeatureSource, FeaturesUnavailable, load_alone
from genbench.evaluators.pictures import MIN_CELL, SEPARATOR, save_picture, to_pil, to_tensor, upscale_factor
from genbench.evaluators.sampling import draw_samples
from genbench.metrics import FeatureExtractor, cached_features, extract_features
from genbench.metrics.cache import feature_cache_path
from genbench.metrics.knn import knn
from genbench.metrics.neighbours import memorisation_ratio_of_distances
from genbench.progress import Progress
from genbench.run.paths import feature_cache_dir

log = logging.getLogger(__name__)

PIXEL_SPACE = "pixel L2, [0, 1] images"
SAMPLE_OFFSET = 3  # ctx.generator offset of the samples
DISTANCE_SIZE = 11  # font size (px) of the distances under the neighbours
BLOCK_GAP = 14  # px between blocks, with the divider in the middle
DIVIDER = (110, 110, 110)
DIVIDER_WIDTH = 2


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


@dataclass(frozen=True)
class NeighbourBlock:
    """One block of the figure: the ``k`` nearest training images of each row's sample in one space."""

    title: str  # e.g. "pixel space (L2)"
    images: Tensor  # (R, k, C, H, W) in [0, 1]
    distances: Tensor  # (R, k), ascending along k


def draw_label(draw, xy: tuple[float, float], text: str, text_font, anchor: str = "mt") -> None:
    """Write ``text`` at ``xy`` (one place for every label of the figure, so tests can read what it says)."""
    draw.text(xy, text, fill=TEXT, font=text_font, anchor=anchor)


def decimals(distances: Tensor, significant: int = 3) -> int:
    """Decimal places that give the block's largest distance ``significant`` digits (2.54, 0.310, 41.2), so a
    block's distances line up."""
    largest = float(distances.abs().max()) if distances.numel() else 0.0
    return max(0, significant - 1 - math.floor(math.log10(largest))) if largest > 0 else significant - 1


def render_neighbours(
    samples: Tensor, blocks: Sequence[NeighbourBlock], caption: str, min_cell: int = MIN_CELL
) -> Tensor:
    """The figure (3, H', W') in [0, 1]: a "sample" column (R, C, H, W), then each block under its title with each
    neighbour's distance under it, blocks parted by a vertical divider, a caption strip on top."""
    from PIL import Image, ImageDraw

    rows, (h, w) = samples.shape[0], samples.shape[-2:]
    scale = upscale_factor(h, w, min_cell)
    cell_h, cell_w, pad = h * scale, w * scale, SEPARATOR
    head_font, dist_font = font(), font(DISTANCE_SIZE)
    dist_h = line_height(dist_font)
    columns = [("sample", samples[:, None], None)] + [(b.title, b.images, b.distances) for b in blocks]

    lefts, x = [], pad  # the left edge of each block
    for i, (_, images, _) in enumerate(columns):
        x += BLOCK_GAP if i else 0
        lefts.append(x)
        x += images.shape[1] * (cell_w + pad)
    width = x
    titles = [wrap(title, images.shape[1] * (cell_w + pad) - pad, head_font) for title, images, _ in columns]
    head_h = line_height(head_font) * max(len(t) for t in titles) + 4
    row_h = cell_h + dist_h + pad
    body = Image.new("RGB", (width, head_h + rows * row_h), BACKGROUND)
    draw = ImageDraw.Draw(body)
    for (_, images, distances), left, lines in zip(columns, lefts, titles, strict=True):
        span = images.shape[1] * (cell_w + pad) - pad
        digits = decimals(distances) if distances is not None else 0
        for j, line in enumerate(lines):
            draw_label(draw, (left + span / 2, 2 + j * line_height(head_font)), line, head_font)
        for r in range(rows):
            top = head_h + r * row_h
            for c in range(images.shape[1]):
                tile = to_pil(images[r, c]).resize((cell_w, cell_h), Image.NEAREST)
                body.paste(tile, (left + c * (cell_w + pad), top))
                if distances is not None:
                    centre = left + c * (cell_w + pad) + cell_w / 2
                    draw_label(
                        draw, (centre, top + cell_h + 1), f"{float(distances[r, c]):.{digits}f}", dist_font
                    )
    for left in lefts[1:]:  # the dividers, in the middle of each gap
        x0 = left - (BLOCK_GAP + DIVIDER_WIDTH) // 2 - pad // 2
        draw.rectangle([x0, 0, x0 + DIVIDER_WIDTH - 1, body.height - 1], fill=DIVIDER)
    return to_tensor(with_caption(body, caption))


class NearestNeighbours:
    """``neighbours.png`` and ``memorisation_ratio@<sampler>`` (pixel L2), on ``n_samples`` samples.

    Figure: one row per sample (``rows``): the sample, its ``k`` nearest training images by pixel L2, then, when
    the ``features`` source (a ``genbench.evaluators.features`` source, e.g. ``ClassifierFeatures``; null for none)
    is available for this dataset, its ``k`` nearest by feature distance; cells of at least ``min_cell`` px.

    Ratio: mean distance from each sample to its nearest training image over the same for held-out test images
    (``n_samples`` of each, fewer if the test split is smaller). About 1: samples as novel as unseen data; near 0:
    samples copy training images. Periodic evaluations use ``periodic_n_samples``. ``cache_dir`` holds the
    data-only parts (null: ``$GENBENCH_CACHE/features`` or ``~/.cache/genbench/features``). The train split's
    features are computed in ``feature_batch_size`` batches: 128 runs the classifier twice as fast as 2048 on a
    2-core CPU (its activations stay in cache), and the features are bitwise the same at any size.
    """

    uses_samples = True  # runs once more per extra sampler (eval.samplers)

    def __init__(
        self,
        rows: int = 8,
        k: int = 5,
        n_samples: int = 5000,
        periodic_n_samples: int = 1000,
        batch_size: int = 500,
        chunk_size: int = 2048,
        features: FeatureSource | None = None,
        cache_dir: str | None = None,
        feature_batch_size: int = 128,
        min_cell: int = MIN_CELL,
    ) -> None:
        if rows < 1 or k < 1 or n_samples < rows or periodic_n_samples < rows:
            raise ValueError("need rows >= 1, k >= 1 and n_samples, periodic_n_samples >= rows")
        self.rows, self.k, self.n_samples, self.periodic_n_samples = rows, k, n_samples, periodic_n_samples
        self.batch_size, self.chunk_size, self.features = batch_size, chunk_size, features
        self._cache_dir, self.feature_batch_size, self.min_cell = cache_dir, feature_batch_size, min_cell

    @property
    def cache_dir(self) -> Path:
        return Path(self._cache_dir).expanduser() if self._cache_dir else feature_cache_dir()

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        n = self.n_samples if ctx.final else self.periodic_n_samples
        timed: dict[str, float] = {}
        started = time.perf_counter()
        samples = draw_samples(
            ctx, n, self.batch_size, SAMPLE_OFFSET, what=f"neighbours: {n} model samples"
        ).float()  # (S, C, H, W)
        timed["samples"], started = time.perf_counter() - started, time.perf_counter()
        test = ctx.datamodule.split("test").images[:n]  # (Q, C, H, W) uint8
        train = ctx.datamodule.split("train").images  # (T, C, H, W) uint8

        # pixel space: each sample's nearest training image (the ratio), then the k nearest of the figure's rows
        flat, pixels = samples.flatten(1), TrainingChunks(ctx, self.chunk_size)  # (S, D); the train split
        sample_dists, test_dists = self._nearest_pixel_distances(ctx, flat, test, pixels)  # (S,), (Q,) | None
        distances, index = knn(flat[: self.rows], pixels, self.k, self.chunk_size)  # (rows, k) x 2
        timed["pixel search"], started = time.perf_counter() - started, time.perf_counter()
        blocks = [NeighbourBlock("pixel space (L2)", self._train_images(ctx, train, index), distances)]

        extractor = self._extractor(ctx)
        if extractor is not None:
            sample_feats = extractor(samples[: self.rows]).flatten(1)  # (rows, F)
            train_feats = self._train_features(ctx, extractor).to(sample_feats)  # (T, F)
            distances, index = knn(sample_feats, train_feats, self.k, self.chunk_size)
            title = f"{extractor.name} feature space (L2)"
            blocks.append(NeighbourBlock(title, self._train_images(ctx, train, index), distances))
            timed["feature neighbours"] = time.perf_counter() - started
        spaces = (
            f"in pixel space (middle block) and in {extractor.name} feature space (right block)"
            if extractor is not None
            else "in pixel space"
        )
        caption = (
            f"nearest training images. Left column: a model sample ({ctx.sampler_name} sampler); then its "
            f"{self.k} nearest of the {len(train)} training images, nearest first, {spaces}. The number under each "
            "neighbour is its L2 distance to the sample."
        )
        picture = render_neighbours(samples[: self.rows], blocks, caption, self.min_cell)
        save_picture(ctx, "neighbours" if ctx.own_sampler else f"neighbours_{ctx.sampler_name}", picture)
        spent = ", ".join(f"{what} {seconds:.1f}s" for what, seconds in timed.items())
        log.info("neighbours (%d samples, %d test vs %d train): %s", n, len(test), len(train), spent)

        out: dict[str, float] = {}
        if test_dists is not None:
            name = f"memorisation_ratio@{ctx.sampler_name}"
            out[name] = memorisation_ratio_of_distances(sample_dists, test_dists)
            ctx.records.setdefault("protocols", {})[name] = {
                "n_samples": n,
                "n_test": len(test),
                "n_train": len(train),
                "distance": PIXEL_SPACE,
            }
        else:
            ctx.records.setdefault("skipped", {})["memorisation_ratio"] = "no test split to compare with"
        return out

    def _extractor(self, ctx: EvalContext) -> FeatureExtractor | None:
        """The feature source's extractor, or None (pixel-space neighbours only)."""
        if self.features is None:
            return None
        try:
            return load_alone(self.features, ctx)  # this evaluator runs on rank 0 alone
        except FeaturesUnavailable as exc:
            log.info("neighbours.png: pixel-space neighbours only (%s)", exc)
            return None

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

    def _train_features(self, ctx: EvalContext, extractor: FeatureExtractor) -> Tensor:
        """``extractor`` features (T, F) of the whole train split, in ``feature_batch_size`` batches under no_grad;
        from and into the reference-feature cache when the extractor has a digest."""
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

        if extractor.cache_id is None:
            return compute()
        key = {
            "dataset": dm.name,
            "split": "train",
            "image_size": dm.image_size,
            "extractor": extractor.cache_id,
            "n": len(train),
            "data": dm.source.cache_key("train"),
        }
        return cached_features(key, compute, self.cache_dir)

    @staticmethod
    def _train_images(ctx: EvalContext, train: Tensor, index: Tensor) -> Tensor:
        """Training images at index (R, k) -> (R, k, C, H, W) floats in [0, 1] on the device."""
        return train[index.cpu()].to(ctx.device).float().div_(255.0)
