"""``neighbours.png`` and the memorisation ratio: how close generated samples sit to the training images.

The training split is streamed through the device in chunks (uint8 on the CPU -> float on the device), so the
search is exact and its memory is bounded by the queries plus one chunk, whatever the dataset's size (CelebA).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from genbench.evaluators.base import EvalContext
from genbench.evaluators.pictures import save_grid
from genbench.metrics.neighbours import nearest_neighbours

log = logging.getLogger(__name__)

Features = Callable[[Tensor], Tensor]  # images (N, C, H, W) in [0, 1] -> features (N, F)


def training_chunks(
    ctx: EvalContext, chunk_size: int, features: Features | None = None
) -> Iterator[tuple[int, Tensor]]:
    """(offset, rows) for consecutive chunks of the train split on the device: flat pixels (n, C*H*W) in [0, 1],
    or ``features`` of them (n, F)."""
    train = ctx.datamodule.split("train").images  # (T, C, H, W) uint8, CPU
    for start in range(0, len(train), chunk_size):
        x = train[start : start + chunk_size].to(ctx.device).float().div_(255.0)
        yield start, (x.flatten(1) if features is None else features(x).flatten(1))


def nearest_in_chunks(
    queries: Tensor, chunks: Iterator[tuple[int, Tensor]], k: int, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """Exact k nearest rows (L2) to queries (Q, D) among a reference set given as (offset, rows) chunks.

    Returns distances (Q, k) ascending and int64 indices (Q, k) into the whole reference set.
    """
    best_d = queries.new_empty(queries.shape[0], 0)
    best_i = torch.empty(queries.shape[0], 0, dtype=torch.long, device=queries.device)
    for start, rows in chunks:
        d, i = nearest_neighbours(queries, rows.to(queries), min(k, rows.shape[0]), chunk_size)  # (Q, <=k)
        cand_d, cand_i = torch.cat([best_d, d], dim=1), torch.cat([best_i, i + start], dim=1)
        best_d, pos = cand_d.topk(min(k, cand_d.shape[1]), dim=1, largest=False, sorted=True)
        best_i = cand_i.gather(1, pos)
    if best_d.shape[1] < k:
        raise ValueError(f"k={k} but the reference set has only {best_d.shape[1]} rows")
    return best_d, best_i


def draw_samples(ctx: EvalContext, n: int, batch_size: int, offset: int) -> Tensor:
    """``n`` model samples (n, C, H, W), drawn in batches from one seeded generator."""
    generator = ctx.generator(offset)
    return torch.cat(
        [ctx.model.sample(min(batch_size, n - s), generator=generator) for s in range(0, n, batch_size)]
    )


class NearestNeighbours:
    """``neighbours.png`` and ``memorisation_ratio@<sampler>`` (pixel L2), on ``n_samples`` samples.

    Figure: one row per sample (``rows``): the sample, its ``k`` nearest training images by pixel L2, then, when
    a feature extractor is available, its ``k`` nearest by feature distance. ``features`` is a factory called
    with the context (so it can pick the dataset's classifier) that returns an images -> features callable, or
    None when none exists for this dataset; configure it with Hydra ``_partial_: true``.

    Ratio: mean distance from each sample to its nearest training image over the same for held-out test images
    (``n_samples`` of each, fewer if the test split is smaller). About 1: samples as novel as unseen data; near 0:
    samples copy training images. Periodic evaluations use ``periodic_n_samples``.
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
    ) -> None:
        if rows < 1 or k < 1 or n_samples < rows or periodic_n_samples < rows:
            raise ValueError("need rows >= 1, k >= 1 and n_samples, periodic_n_samples >= rows")
        self.rows, self.k, self.n_samples, self.periodic_n_samples = rows, k, n_samples, periodic_n_samples
        self.batch_size, self.chunk_size, self.features = batch_size, chunk_size, features

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        n = self.n_samples if ctx.final else self.periodic_n_samples
        samples = draw_samples(ctx, n, self.batch_size, offset=3).float()  # (S, C, H, W)
        test = ctx.datamodule.split("test").images[:n]  # (Q, C, H, W) uint8
        queries = torch.cat([samples.flatten(1), test.to(ctx.device).flatten(1).float().div_(255.0)])
        dists, index = nearest_in_chunks(
            queries, training_chunks(ctx, self.chunk_size), self.k, self.chunk_size
        )

        train = ctx.datamodule.split("train").images
        tiles = [samples[: self.rows, None], self._train_images(ctx, train, index[: self.rows])]
        extractor = self.features(ctx) if self.features is not None else None
        if extractor is not None:
            sample_feats = extractor(samples[: self.rows]).flatten(1)  # (rows, F)
            chunks = training_chunks(ctx, self.chunk_size, extractor)
            _, feat_index = nearest_in_chunks(sample_feats, chunks, self.k, self.chunk_size)
            tiles.append(self._train_images(ctx, train, feat_index))
        else:
            log.info("neighbours.png: no feature extractor, pixel-space neighbours only")
        figure = torch.cat(tiles, dim=1)  # (rows, 1 + k [+ k], C, H, W)
        save_grid(ctx, "neighbours", figure.flatten(0, 1), nrow=figure.shape[1])

        out: dict[str, float] = {}
        if len(test):
            name = f"memorisation_ratio@{ctx.model.sampler_name}"
            out[name] = float(dists[:n, 0].mean() / dists[n:, 0].mean())
            ctx.records.setdefault("protocols", {})[name] = {
                "n_samples": n,
                "n_test": len(test),
                "n_train": len(train),
                "distance": "pixel L2, [0, 1] images",
            }
        else:
            ctx.records.setdefault("skipped", {})["memorisation_ratio"] = "no test split to compare with"
        return out

    @staticmethod
    def _train_images(ctx: EvalContext, train: Tensor, index: Tensor) -> Tensor:
        """Training images at index (R, k) -> (R, k, C, H, W) floats in [0, 1] on the device."""
        return train[index.cpu()].to(ctx.device).float().div_(255.0)
