"""Perceptual path length: the maths against closed forms and a brute-force loop, and the evaluator on a fake model."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from genbench.callbacks.evaluation import run_evaluators
from genbench.classifier import load_or_train
from genbench.data import ImageDataModule
from genbench.data.sources import DigitsSource
from genbench.evaluators.base import EvalContext
from genbench.evaluators.features import FeaturesUnavailable
from genbench.evaluators.path_length import PathLength
from genbench.interface import GenerativeModel
from genbench.latent import NormalSampler
from genbench.metrics.path_length import lerp_pairs, path_lengths, slerp_pairs, trimmed_mean

SIZE = 16
EPS = 1e-4


# -- the maths -----------------------------------------------------------------------------------------------------
def brute_force(decode, features, z0, z1, t, eps, interpolation) -> Tensor:
    """One pair at a time, straight from the definition."""
    out = []
    for a, b, s in zip(z0, z1, t.tolist(), strict=True):
        if interpolation == "lerp":
            p, q = a + s * (b - a), a + (s + eps) * (b - a)
        else:
            omega = torch.arccos(torch.dot(a, b) / (a.norm() * b.norm()))
            p = (math.sin((1 - s) * omega) * a + math.sin(s * omega) * b) / math.sin(omega)
            r = s + eps
            q = (math.sin((1 - r) * omega) * a + math.sin(r * omega) * b) / math.sin(omega)
        fp, fq = features(decode(p[None])).flatten(), features(decode(q[None])).flatten()
        out.append(float(((fq - fp) ** 2).sum()) / eps**2)
    return torch.tensor(out, dtype=torch.float64)


def test_linear_decoder_with_lerp_and_pixels_is_exactly_the_squared_image_of_the_difference():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1 * 4 * 4, 5, generator=g, dtype=torch.float64)  # G(z) = W z, as a 1 x 4 x 4 image
    z0, z1 = torch.randn(2, 37, 5, generator=g, dtype=torch.float64)
    t = torch.rand(37, generator=g, dtype=torch.float64)

    def decode(z: Tensor) -> Tensor:
        return (z @ w.T).view(-1, 1, 4, 4)

    got = path_lengths(decode, lambda x: x, z0, z1, t, EPS, "lerp", batch_size=8)
    exact = ((z1 - z0) @ w.T).pow(2).sum(dim=1)
    torch.testing.assert_close(got, exact, rtol=1e-6, atol=0)
    torch.testing.assert_close(got, brute_force(decode, lambda x: x, z0, z1, t, EPS, "lerp"))


@pytest.mark.parametrize("interpolation", ["lerp", "slerp"])
def test_batched_values_match_the_brute_force_loop(interpolation):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(12, 4, generator=g, dtype=torch.float64)
    v = torch.randn(3, 12, generator=g, dtype=torch.float64)
    z0, z1 = torch.randn(2, 23, 4, generator=g, dtype=torch.float64)
    if interpolation == "slerp":
        z0, z1 = z0 / z0.norm(dim=1, keepdim=True), z1 / z1.norm(dim=1, keepdim=True)
    t = torch.rand(23, generator=g, dtype=torch.float64)

    def decode(z: Tensor) -> Tensor:  # nonlinear decoder and features
        return torch.sigmoid(z @ w.T).view(-1, 1, 3, 4)

    def features(x: Tensor) -> Tensor:
        return torch.tanh(x.flatten(1) @ v.T)

    got = path_lengths(decode, features, z0, z1, t, EPS, interpolation, batch_size=5)
    torch.testing.assert_close(got, brute_force(decode, features, z0, z1, t, EPS, interpolation))


def test_slerp_on_the_sphere_moves_at_the_angle_per_unit_t():
    """Identity decoder on unit codes: the path is the great circle, travelled at speed omega (the angle between
    the codes), so each value is the squared chord (2 sin(omega eps / 2))^2 / eps^2 ~ omega^2, whatever t."""
    g = torch.Generator().manual_seed(2)
    z0 = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    z1 = torch.tensor([[0.0, 1.0], [-1.0, 1e-3]], dtype=torch.float64)
    z1 = z1 / z1.norm(dim=1, keepdim=True)
    more0, more1 = torch.randn(2, 50, 7, generator=g, dtype=torch.float64)
    z0 = torch.cat([torch.nn.functional.pad(z0, (0, 5)), more0 / more0.norm(dim=1, keepdim=True)])
    z1 = torch.cat([torch.nn.functional.pad(z1, (0, 5)), more1 / more1.norm(dim=1, keepdim=True)])
    t = torch.rand(52, generator=g, dtype=torch.float64)
    omega = torch.arccos((z0 * z1).sum(dim=1))
    got = path_lengths(lambda z: z, lambda x: x, z0, z1, t, EPS, "slerp")
    torch.testing.assert_close(got, (2 * torch.sin(omega * EPS / 2)).pow(2) / EPS**2, rtol=1e-6, atol=0)
    assert got[0] == pytest.approx(math.pi**2 / 4, rel=1e-6)
    points = slerp_pairs(z0, z1, t)
    torch.testing.assert_close(points.norm(dim=1), torch.ones(52, dtype=torch.float64))
    # endpoints, and lerp's straight line for comparison
    torch.testing.assert_close(slerp_pairs(z0, z1, torch.zeros(52)), z0)
    torch.testing.assert_close(slerp_pairs(z0, z1, torch.ones(52)), z1)
    torch.testing.assert_close(lerp_pairs(z0, z1, torch.full((52,), 0.5)), (z0 + z1) / 2)


def test_trimmed_mean_drops_the_extreme_percent_as_stylegan():
    values = torch.cat([torch.arange(1000.0), torch.tensor([1e9, -1e9])]).double()
    shuffled = values[torch.randperm(len(values), generator=torch.Generator().manual_seed(0))]
    array = shuffled.numpy()
    lo, hi = np.percentile(array, 1, method="lower"), np.percentile(array, 99, method="higher")
    expected = array[(array >= lo) & (array <= hi)].mean()
    assert trimmed_mean(shuffled) == pytest.approx(expected, rel=1e-12)
    assert 495 < trimmed_mean(shuffled) < 505  # the outliers are gone
    assert math.isnan(trimmed_mean(torch.tensor([1.0, float("nan"), 2.0])))
    assert math.isnan(trimmed_mean(torch.zeros(0)))


# -- the evaluator ---------------------------------------------------------------------------------------------------
class Linear(GenerativeModel):
    """decode(z) = sigmoid(scale * W z) as a 1 x 16 x 16 image; encode(x) = a fixed projection of the pixels.

    ``sampler``: a ``NormalSampler`` (the GLO path) or none (codes then come from ``encode``).
    """

    def __init__(self, scale: float = 1.0, geometry: str = "euclidean", sampler: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.latent_dim, self.scale, self.latent_geometry = 4, scale, geometry
        self.register_buffer("w", torch.randn(SIZE * SIZE, 4, generator=g))
        self.register_buffer("e", torch.randn(SIZE * SIZE, 4, generator=g) / SIZE)
        if sampler:
            self.sampler = NormalSampler(4, "sphere" if geometry == "sphere" else "none")

    @property
    def sampler_name(self) -> str:
        return self.sampler.name if hasattr(self, "sampler") else "prior"

    def encode(self, x: Tensor) -> Tensor:
        z = x.flatten(1) @ self.e
        return z / z.norm(dim=1, keepdim=True) if self.latent_geometry == "sphere" else z

    def decode(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.scale * z @ self.w.T).view(-1, 1, SIZE, SIZE)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.decode(torch.randn(n, 4, generator=generator))

    def reconstruct(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        return self.decode(self.encode(x))


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("genbench-cache")


@pytest.fixture(scope="module")
def digits(cache_root) -> ImageDataModule:
    return ImageDataModule(
        name="digits",
        source=partial(DigitsSource),
        root=None,
        image_size=SIZE,
        channels=1,
        cache_dir=str(cache_root),
    )


@pytest.fixture(scope="module")
def trained(digits, cache_root):
    return load_or_train(digits, "cpu", cache_root / "classifiers", epochs=1, min_steps=60, batch_size=64)


@pytest.fixture
def genbench_cache(cache_root, trained, monkeypatch) -> Path:
    monkeypatch.setenv("GENBENCH_CACHE", str(cache_root))
    return cache_root


def evaluate(
    evaluator, model, dm, run_dir: Path, seed: int = 0, final: bool = True
) -> tuple[dict, EvalContext]:
    return run_evaluators({"path_length": evaluator}, model, dm, run_dir, torch.device("cpu"), seed, final)


def test_path_length_on_classifier_features_with_its_protocol(genbench_cache, trained, digits, tmp_path):
    evaluator = PathLength(n_pairs=300, periodic_n_pairs=50)
    results, _ = evaluate(evaluator, Linear(), digits, tmp_path)
    value = results["path_length_classifier@prior"]
    assert math.isfinite(value) and value > 0
    protocol = results["protocols"]["path_length_classifier@prior"]
    assert protocol["n_pairs"] == 300 and protocol["epsilon"] == EPS
    assert "seed" not in protocol  # the run's seed is what seeds differ by, not the protocol
    assert protocol["interpolation"] == "lerp" and "encode" in protocol["codes"]
    assert protocol["feature_digest"] == trained.digest and trained.digest in protocol["feature_extractor"]
    assert "1st percentile" in protocol["trim"]

    again, _ = evaluate(PathLength(n_pairs=300), Linear(), digits, tmp_path)
    assert again["path_length_classifier@prior"] == value  # deterministic given the seed
    other, _ = evaluate(PathLength(n_pairs=300), Linear(), digits, tmp_path, seed=1)
    assert other["path_length_classifier@prior"] != value
    periodic, _ = evaluate(evaluator, Linear(), digits, tmp_path, final=False)
    assert periodic["protocols"]["path_length_classifier@prior"]["n_pairs"] == 50

    smooth, _ = evaluate(PathLength(n_pairs=300), Linear(scale=0.3), digits, tmp_path)
    assert smooth["path_length_classifier@prior"] < value / 3


def test_sampler_codes_slerp_and_pixels(digits, tmp_path):
    model = Linear(geometry="sphere", sampler=True)
    results, _ = evaluate(PathLength(features="pixels", n_pairs=200), model, digits, tmp_path)
    protocol = results["protocols"]["path_length_pixels@normal"]
    assert (
        protocol["interpolation"] == "slerp"
        and protocol["sampler"] == "normal"
        and "sampler" in protocol["codes"]
    )
    assert protocol["feature_extractor"].startswith("pixels")
    assert results["path_length_pixels@normal"] > 0

    # the same draws by hand: codes from the sampler, t from their generators, slerp, pixel distances
    ctx = EvalContext(model=model, datamodule=digits, run_dir=tmp_path, device=torch.device("cpu"))
    z = model.sampler.sample(400, ctx.generator(41))
    t = torch.rand(200, generator=ctx.generator(42))
    expected = trimmed_mean(path_lengths(model.decode, lambda x: x, z[:200], z[200:], t, EPS, "slerp"))
    assert results["path_length_pixels@normal"] == pytest.approx(expected, rel=1e-9)

    smoother, _ = evaluate(
        PathLength(features="pixels", n_pairs=200), Linear(0.3, "sphere", True), digits, tmp_path
    )
    assert smoother["path_length_pixels@normal"] < results["path_length_pixels@normal"] / 3


class WithCodes(Linear):
    def sample_codes(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, 4, generator=generator)


def test_sample_codes_is_preferred_and_codes_sampler_without_one_is_a_recorded_skip(digits, tmp_path):
    results, _ = evaluate(PathLength(features="pixels", n_pairs=100), WithCodes(), digits, tmp_path)
    assert "sample_codes" in results["protocols"]["path_length_pixels@prior"]["codes"]
    results, _ = evaluate(PathLength(features="pixels", codes="sampler"), Linear(), digits, tmp_path)
    assert not any(k.startswith("path_length") for k in results)
    assert "codes=sampler" in results["skipped"]["path_length"]


class Unavailable:
    name = "classifier"

    def load(self, ctx: EvalContext):
        raise FeaturesUnavailable("digits has no labels (pretend)")


def test_unavailable_features_fall_back_to_pixels_with_a_reason(digits, tmp_path):
    results, _ = evaluate(PathLength(features=Unavailable(), n_pairs=100), Linear(), digits, tmp_path)
    assert results["path_length_pixels@prior"] > 0
    assert "no labels" in results["skipped"]["path_length_classifier"]


def test_rank_zero_alone_under_ddp_needs_no_collective(genbench_cache, digits, tmp_path):
    """Under DDP only rank 0 runs this evaluator: loading the classifier must not wait for the other ranks."""
    ctx = EvalContext(
        model=Linear(), datamodule=digits, run_dir=tmp_path, device=torch.device("cpu"), world_size=2
    )
    with torch.no_grad():
        assert PathLength(n_pairs=50)(ctx)["path_length_classifier@prior"] > 0


def test_default_config_builds_it():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parents[1] / "conf" / "eval"
    built = instantiate(OmegaConf.load(root / "default.yaml").evaluators.path_length)
    assert isinstance(built, PathLength) and (built.n_pairs, built.periodic_n_pairs) == (2000, 200)
    assert built.epsilon == EPS and built.features.name == "classifier" and built.codes == "auto"
    fast = OmegaConf.load(root / "fast.yaml").evaluators.path_length
    assert (fast.n_pairs, fast.periodic_n_pairs) == (500, 200)
