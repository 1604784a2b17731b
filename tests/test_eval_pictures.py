"""Evaluation pictures: interpolations, nearest neighbours + memorisation ratio, 2-D latent plane."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import Tensor

from genbench.callbacks.evaluation import run_evaluators
from genbench.data import ImageDataModule
from genbench.data.sources import DigitsSource
from genbench.evaluators.interpolation import Interpolations, interpolate, slerp
from genbench.evaluators.latent_plane import LatentPlane
from genbench.evaluators.neighbours import NearestNeighbours, nearest_in_chunks
from genbench.interface import GenerativeModel
from genbench.models.vae import VAE
from genbench.nets.conv import ConvDecoder, ConvEncoder

SIZE = 16


def grid_size(rows: int, columns: int, tile: int = SIZE, pad: int = 2) -> tuple[int, int]:
    """(height, width) of torchvision's make_grid with ``padding=pad``."""
    return rows * (tile + pad) + pad, columns * (tile + pad) + pad


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.height, image.width


def make_vae(latent_dim: int) -> VAE:
    return VAE(
        encoder=partial(ConvEncoder, channels=1, image_size=SIZE, base_width=8),
        decoder=partial(ConvDecoder, channels=1, image_size=SIZE, base_width=8),
        latent_dim=latent_dim,
    )


class Copier(GenerativeModel):
    """Samples are copies of ``pool`` images (random, or its first n when ``ordered``); codes are a few pixels,
    optionally on the unit sphere; ``decoded`` keeps every code batch it decoded."""

    def __init__(
        self, pool: Tensor, latent_dim: int = 3, geometry: str = "euclidean", ordered: bool = False
    ) -> None:
        super().__init__()
        self.pool, self.latent_dim, self.latent_geometry, self.ordered = pool, latent_dim, geometry, ordered
        self.decoded: list[Tensor] = []

    def encode(self, x: Tensor) -> Tensor:
        z = x.flatten(1)[:, 40 : 40 + self.latent_dim] + 0.1
        return z / z.norm(dim=1, keepdim=True) if self.latent_geometry == "sphere" else z

    def decode(self, z: Tensor) -> Tensor:
        self.decoded.append(z)
        return z.mean(dim=1).clamp(0, 1).view(-1, 1, 1, 1).expand(-1, 1, SIZE, SIZE)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if self.ordered:
            return self.pool[:n]
        return self.pool[
            torch.randint(len(self.pool), (n,), generator=generator, device=generator.device).cpu()
        ]

    def reconstruct(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        return x

    @property
    def sampler_name(self) -> str:
        return "copies"


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> ImageDataModule:
    dm = ImageDataModule(
        "digits", DigitsSource, None, SIZE, 1, cache_dir=str(tmp_path_factory.mktemp("cache"))
    )
    dm.prepare_data()
    return dm


def evaluate(model, dm, tmp_path, **evaluators):
    return run_evaluators(evaluators, model, dm, tmp_path, torch.device("cpu"), seed=0, final=True)


# -- interpolation -----------------------------------------------------------------------------------------------
def test_slerp_endpoints_exact_and_path_on_sphere():
    a, b = (
        torch.nn.functional.normalize(torch.randn(5, 7), dim=1),
        torch.nn.functional.normalize(torch.randn(5, 7), dim=1),
    )
    path = interpolate(a, b, 10, "sphere")  # (5, 10, 7)
    assert path.shape == (5, 10, 7)
    assert torch.equal(path[:, 0], a) and torch.allclose(path[:, -1], b, atol=1e-6)
    assert torch.allclose(path.norm(dim=-1), torch.ones(5, 10), atol=1e-5)
    # constant angular speed: consecutive points are equally far apart
    steps = (path[:, 1:] - path[:, :-1]).norm(dim=-1)
    assert torch.allclose(steps, steps[:, :1].expand_as(steps), atol=1e-5)
    same = slerp(a, a.clone(), torch.linspace(0, 1, 4))  # degenerate arc: no NaN
    assert torch.allclose(same, a[:, None].expand(-1, 4, -1), atol=1e-6)


def test_linear_interpolation_is_a_straight_line():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    path = interpolate(a, b, 10)
    assert torch.equal(path[:, 0], a) and torch.allclose(path[:, -1], b)
    assert torch.allclose(path[:, 4], a + (b - a) * 4 / 9, atol=1e-6)


@pytest.mark.parametrize("geometry", ["euclidean", "sphere"])
def test_interpolations_png_size_and_geometry(digits, tmp_path, geometry):
    model = Copier(digits.images("train")[:50], geometry=geometry)
    evaluate(model, digits, tmp_path, interpolations=Interpolations(rows=4, steps=10))
    assert png_size(tmp_path / "interpolations.png") == grid_size(4, 12)
    path = model.decoded[-1]  # (4 * 10, 3) codes decoded
    norms = path.norm(dim=1)
    if geometry == "sphere":
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    else:  # the chords cut inside the sphere through the endpoints' norms
        assert not torch.allclose(norms, torch.ones_like(norms), atol=1e-3)


def test_interpolations_with_a_vae_without_originals(digits, tmp_path):
    _, ctx = evaluate(
        make_vae(4), digits, tmp_path, interpolations=Interpolations(rows=3, steps=10, with_originals=False)
    )
    assert png_size(tmp_path / "interpolations.png") == grid_size(3, 10)
    assert ctx.pictures["interpolations"].shape == (3, *grid_size(3, 10))


# -- neighbours and memorisation ---------------------------------------------------------------------------------
def test_nearest_in_chunks_matches_brute_force():
    queries, reference = torch.randn(13, 6), torch.randn(50, 6)
    chunks = ((s, reference[s : s + 7]) for s in range(0, 50, 7))
    d, i = nearest_in_chunks(queries, chunks, k=5, chunk_size=4)
    brute_d, brute_i = torch.cdist(queries, reference).topk(5, dim=1, largest=False)
    assert torch.equal(i, brute_i) and torch.allclose(d, brute_d, atol=1e-5)


def tiles(grid: Tensor, rows: int, columns: int) -> Tensor:
    """Cut a make_grid picture of grey images (3, H, W) back into its tiles (rows, columns, 16*16)."""
    out = torch.stack(
        [
            torch.stack(
                [
                    grid[:1, 2 + r * 18 : 2 + r * 18 + SIZE, 2 + c * 18 : 2 + c * 18 + SIZE]
                    for c in range(columns)
                ]
            )
            for r in range(rows)
        ]
    )
    return out.flatten(2)


def test_neighbours_are_the_true_nearest_in_pixels_and_features(digits, tmp_path):
    def features(x: Tensor) -> Tensor:  # a metric other than pixel L2
        return x.flatten(1)[:, ::3] * torch.linspace(0, 1, 86)

    evaluator = NearestNeighbours(
        rows=4, k=5, n_samples=20, batch_size=8, chunk_size=300, features=lambda ctx: features
    )
    _, ctx = evaluate(make_vae(4), digits, tmp_path, neighbours=evaluator)
    assert png_size(tmp_path / "neighbours.png") == grid_size(4, 11)
    cut = tiles(ctx.pictures["neighbours"], 4, 11)  # (4, 11, 256)
    train = digits.images("train").flatten(1)
    samples = cut[:, 0]
    for columns, space in ((slice(1, 6), lambda x: x), (slice(6, 11), features)):
        expected, _ = torch.cdist(space(samples), space(train)).topk(5, dim=1, largest=False)  # brute force
        shown = cut[:, columns]  # (4, 5, 256) the training images the figure shows
        got = torch.stack([torch.cdist(space(samples[r : r + 1]), space(shown[r]))[0] for r in range(4)])
        assert torch.allclose(got, expected, atol=1e-4)  # ties may swap images, never distances


def test_neighbours_without_features_and_memorisation_of_copies(digits, tmp_path):
    model = Copier(digits.images("train"))
    results, _ = evaluate(
        model, digits, tmp_path, neighbours=NearestNeighbours(rows=8, k=5, n_samples=64, chunk_size=500)
    )
    assert png_size(tmp_path / "neighbours.png") == grid_size(8, 6)
    assert results["memorisation_ratio@copies"] < 0.01  # samples are training images
    assert results["protocols"]["memorisation_ratio@copies"]["n_samples"] == 64


def test_memorisation_ratio_is_one_for_held_out_images(digits, tmp_path):
    test = digits.images("test")
    model = Copier(test, ordered=True)  # samples are the test images themselves, in order
    n = len(test)
    results, _ = evaluate(model, digits, tmp_path, neighbours=NearestNeighbours(n_samples=n, batch_size=n))
    assert results["memorisation_ratio@copies"] == pytest.approx(1.0, abs=1e-6)


# -- 2-D latent plane --------------------------------------------------------------------------------------------
def test_latent_plane_pictures_for_two_dimensional_codes(digits, tmp_path):
    evaluate(
        make_vae(2),
        digits,
        tmp_path,
        latent_plane=LatentPlane(n_points=300, grid=6, size=128, batch_size=128),
    )
    assert png_size(tmp_path / "latent_scatter.png") == (128, 128)  # make_grid leaves a single image unpadded
    assert png_size(tmp_path / "latent_manifold.png") == grid_size(6, 6)
    with Image.open(tmp_path / "latent_scatter.png") as image:  # coloured dots, not a blank canvas
        assert len(set(image.convert("RGB").getdata())) > 5


def test_latent_plane_skipped_for_other_sizes(digits, tmp_path):
    results, ctx = evaluate(make_vae(4), digits, tmp_path, latent_plane=LatentPlane(n_points=50))
    assert not ctx.pictures and not list(tmp_path.glob("latent_*.png")) and results == {}


def test_default_config_builds_the_picture_evaluators():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "eval" / "default.yaml")
    built = {
        name: instantiate(conf.evaluators[name]) for name in ("interpolations", "neighbours", "latent_plane")
    }
    assert isinstance(built["interpolations"], Interpolations) and built["interpolations"].steps == 10
    assert isinstance(built["neighbours"], NearestNeighbours) and built["neighbours"].k == 5
    assert isinstance(built["latent_plane"], LatentPlane) and built["latent_plane"].grid == 20
