"""``path_length_<features>@<sampler>``: perceptual path length, as StyleGAN's and ALAE's PPL.

For ``n_pairs`` code pairs (z0, z1) and t ~ U(0, 1) per pair, the mean over pairs (1% lowest and 1% highest
discarded, as StyleGAN) of

    ||phi(G(interp(z0, z1, t))) - phi(G(interp(z0, z1, t + eps)))||^2 / eps^2,    eps = 1e-4

(``genbench.metrics.path_length``). G is ``model.decode``; interp is slerp when ``model.latent_geometry`` is
'sphere' and lerp otherwise (StyleGAN: slerp in its Gaussian Z, lerp in W; ALAE reports lerp in W: genbench's
codes are what ``decode`` takes, so lerp unless the codes live on the sphere).

phi: the ``features`` source's extractor, by default the dataset classifier's penultimate features
(``ClassifierFeatures``, exactly the extractor and loading path of ``fid_classifier``); where it is unavailable
(unlabelled datasets) the pixels themselves (C x H x W values in [0, 1]), recorded as ``path_length_pixels`` with the
reason under ``records["skipped"]``. StyleGAN's LPIPS (VGG16 + learned linear weights) is not used: genbench has no
LPIPS weights.

Codes (``codes``), since the contract has no "draw codes" method:
- ``sampler``: the codes ``model.sample`` decodes. A model that defines ``sample_codes(n, generator) -> (n, D)`` is
  asked for them; otherwise a model whose ``sampler`` attribute is a ``genbench.latent.LatentSampler`` (GLO,
  incremental GLO) is sampled from it, after one ``model.sample`` call that refits a stale sampler.
- ``encoded``: ``model.encode`` of random test images (2 x n_pairs distinct images when the split has as many;
  otherwise drawn with replacement, the two images of a pair always different; each image is encoded once).
  Every model supports it (GLO by inversion, slow; GLO has a sampler, so ``auto`` never inverts). VAE and ALAE
  take this path under ``auto``: their priors (N(0, I); ALAE's W = mapping(z)) are not visible through the
  contract, so their codes are those of real test images (the aggregate posterior), on which the decoder trains.
- ``auto`` (default): ``sampler`` where the model has one, else ``encoded``.
The protocol says which. Runs on rank 0 only, under the evaluation's no_grad and eval mode; deterministic given
``ctx.seed`` (generators ``ctx.generator(CODE_OFFSET)`` for the codes and ``ctx.generator(T_OFFSET)`` for t).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import Tensor

from genbench.evaluators.base import EvalContext
from genbench.evaluators.features import ClassifierFeatures, FeatureSource, FeaturesUnavailable, load_alone
from genbench.evaluators.interpolation import latent_geometry
from genbench.evaluators.sampling import held_out_split
from genbench.interface import EncoderUnavailable
from genbench.latent import LatentSampler
from genbench.metrics.features import FeatureExtractor, pixel_features
from genbench.metrics.path_length import path_lengths, trimmed_mean

log = logging.getLogger(__name__)

CODE_SOURCES = ("auto", "sampler", "encoded")
CODE_OFFSET, T_OFFSET, REFRESH_OFFSET = 41, 42, 43  # ctx.generator offsets
# The protocol's `codes` for drawn codes: the same for every sampler (its name is the protocol's `sampler`, which
# the leaderboard's rows differ by), so one model's samplers share one table.
SAMPLED = "drawn from the sampler (model.sample_codes, or the sampler fitted to the codes)"
TRIM = (
    "values below the 1st percentile (numpy 'lower') and above the 99th (numpy 'higher') discarded before the "
    "mean, as StyleGAN"
)


class CodesUnavailable(RuntimeError):
    """No codes can be drawn for this model; the message says why."""


class PathLength:
    """Perceptual path length (see the module docstring) over ``n_pairs`` pairs (``periodic_n_pairs`` during
    training), in batches of ``batch_size`` pairs (2 x batch_size decodings per call).

    ``features``: a ``FeatureSource`` (as ``GenerativeMetrics`` takes), "classifier" (``ClassifierFeatures()``) or
    "pixels". ``codes``: "auto", "sampler" or "encoded". ``epsilon``: the finite-difference step in t.
    """

    uses_samples = True  # runs once more per extra sampler (eval.samplers)

    def __init__(
        self,
        features: FeatureSource | str = "classifier",
        n_pairs: int = 2000,
        periodic_n_pairs: int = 200,
        epsilon: float = 1e-4,
        batch_size: int = 500,
        codes: str = "auto",
        split: str = "test",
    ) -> None:
        if min(n_pairs, periodic_n_pairs, batch_size) < 1 or not epsilon > 0:
            raise ValueError("need n_pairs, periodic_n_pairs, batch_size >= 1 and epsilon > 0")
        if codes not in CODE_SOURCES:
            raise ValueError(f"codes must be one of {CODE_SOURCES}, got {codes!r}")
        if features == "classifier":
            features = ClassifierFeatures()
        elif features == "pixels":
            features = None
        elif isinstance(features, str):
            raise ValueError(f"features must be a FeatureSource, 'classifier' or 'pixels', got {features!r}")
        self.features: FeatureSource | None = features
        self.n_pairs, self.periodic_n_pairs, self.epsilon = n_pairs, periodic_n_pairs, epsilon
        self.batch_size, self.codes, self.split = batch_size, codes, split

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        n = self.n_pairs if ctx.final else self.periodic_n_pairs
        try:
            z0, z1, codes = self._draw_codes(ctx, n)
        except CodesUnavailable as exc:
            log.warning("path_length skipped: %s", exc)
            ctx.records.setdefault("skipped", {})["path_length"] = str(exc)
            return {}
        features = self._features(ctx)
        name = features.name
        geometry = latent_geometry(ctx.model)
        interpolation = "slerp" if geometry == "sphere" else "lerp"
        t = torch.rand(n, generator=ctx.generator(T_OFFSET), device=ctx.device)

        started = time.perf_counter()
        values = path_lengths(
            ctx.model.decode, features.extract, z0, z1, t, self.epsilon, interpolation, self.batch_size
        )
        mean = trimmed_mean(values)
        log.info("path_length_%s: %d pairs in %.1fs", name, n, time.perf_counter() - started)

        key = f"path_length_{name}@{ctx.sampler_name}"
        ctx.records.setdefault("protocols", {})[key] = {
            "n_pairs": n,
            "epsilon": self.epsilon,
            "t": "U(0, 1) per pair",
            "interpolation": interpolation,
            "latent_geometry": geometry,
            "codes": codes,
            "sampler": ctx.sampler_name,
            "distance": "squared Euclidean distance of the features at t and t + epsilon, / epsilon^2",
            "feature_extractor": features.description,
            "feature_digest": features.digest,
            "trim": TRIM,
        }
        return {key: mean}

    # -- codes -----------------------------------------------------------------------------------------------------
    def _draw_codes(self, ctx: EvalContext, n: int) -> tuple[Tensor, Tensor, str]:
        """Pairs of codes (n, D) x 2 on the device, and what the protocol says about them."""
        generator = ctx.generator(CODE_OFFSET)
        source = self.codes
        if source in ("auto", "sampler"):
            drawn = self._sampled(ctx, 2 * n, generator)
            if drawn is not None:
                z, what = drawn
                z = z.to(ctx.device)
                return z[:n], z[n:], what
            if source == "sampler":
                raise CodesUnavailable(
                    "codes=sampler, but the model has neither sample_codes(n, generator) nor a LatentSampler "
                    "`sampler`; use codes=auto or codes=encoded"
                )
        return self._encoded(ctx, n, generator)

    def _sampled(self, ctx: EvalContext, n: int, generator: torch.Generator) -> tuple[Tensor, str] | None:
        model = ctx.model
        if not ctx.own_sampler:  # a sampler fitted to the codes after training: its own draws
            return ctx.source.sample_codes(n, generator), SAMPLED
        sample_codes: Callable[..., Tensor] | None = getattr(model, "sample_codes", None)
        if callable(sample_codes):
            try:
                return sample_codes(n, generator=generator), SAMPLED
            except NotImplementedError:  # the contract's default: this model does not expose its prior codes
                pass
        sampler = getattr(model, "sampler", None)
        if isinstance(sampler, LatentSampler):
            model.sample(
                1, generator=ctx.generator(REFRESH_OFFSET)
            )  # refits a sampler the codes have outgrown
            return sampler.sample(n, generator), SAMPLED
        return None

    def _encoded(self, ctx: EvalContext, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, str]:
        split = held_out_split(ctx.datamodule, self.split)
        m = len(ctx.datamodule.split(split))
        if m < 2:
            raise CodesUnavailable(f"codes=encoded needs 2 or more {split} images, found {m}")
        where = generator.device
        if m >= 2 * n:  # 2n distinct images
            index = torch.randperm(m, generator=generator, device=where)[: 2 * n]
            drawn = f"model.encode of {2 * n} distinct random {split} images"
        else:  # with replacement; the two images of a pair differ
            first = torch.randint(m, (n,), generator=generator, device=where)
            second = (first + torch.randint(1, m, (n,), generator=generator, device=where)) % m
            index = torch.cat([first, second])
            drawn = f"model.encode of random {split} images (with replacement; a pair's two differ)"
        unique, inverse = torch.unique(index, return_inverse=True)  # each image encoded once
        codes = []
        try:
            for batch in unique.split(self.batch_size):
                codes.append(ctx.model.encode(ctx.datamodule.images(split, batch, ctx.device)))
        except EncoderUnavailable as exc:
            raise CodesUnavailable(f"no sampler to draw codes from and no encoder: {exc}") from exc
        z = torch.cat(codes)[inverse.to(ctx.device)]  # (2n, D)
        return z[:n], z[n:], drawn

    # -- features --------------------------------------------------------------------------------------------------
    def _features(self, ctx: EvalContext) -> FeatureExtractor:
        """The source's extractor; pixels where it is unavailable (the reason under ``skipped``)."""
        if self.features is not None:
            try:
                return load_alone(self.features, ctx)  # this evaluator runs on rank 0 alone
            except FeaturesUnavailable as exc:
                reason = f"{exc}; path_length_pixels instead"
                ctx.records.setdefault("skipped", {})[f"path_length_{self.features.name}"] = reason
        return pixel_features()


__all__ = ["CODE_SOURCES", "CodesUnavailable", "PathLength"]
