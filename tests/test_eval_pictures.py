"""Evaluation pictures: sample/reconstruction grids (upscaled, captioned, labelled), interpolations, nearest
neighbours + memorisation ratio, 2-D latent plane, loss curves."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

from genbench import drawing
from genbench.callbacks.evaluation import run_evaluators
from genbench.data import ImageDataModule
from genbench.data.sources import DigitsSource
from genbench.evaluators import neighbours as neighbours_module
from genbench.evaluators import pictures
from genbench.evaluators.base import EvalContext
from genbench.evaluators.interpolation import Interpolations, interpolate, slerp
from genbench.evaluators.latent_plane import LatentPlane
from genbench.evaluators.losses import LossCurves, panels, read_curves
from genbench.evaluators.neighbours import NearestNeighbours
from genbench.interface import GenerativeModel
from genbench.metrics import FeatureExtractor
from genbench.models.vae import VAE
from genbench.nets.conv import ConvDecoder, ConvEncoder
from genbench.run.record import read_record

SIZE = 16
CELL = 48  # digits' 16 px tiles upscaled x3 in the captioned grids
REPO = Path(__file__).resolve().parents[1]


def grid_size(rows: int, columns: int, tile: int = SIZE, pad: int = 2) -> tuple[int, int]:
    """(height, width) of torchvision's make_grid with ``padding=pad``."""
    return rows * (tile + pad) + pad, columns * (tile + pad) + pad


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.height, image.width


@pytest.fixture
def captions(monkeypatch) -> list[str]:
    """Every caption text drawn while the test runs."""
    drawn: list[str] = []
    strip = drawing.caption_strip

    def spy(text, width, *args, **kwargs):
        drawn.append(text)
        return strip(text, width, *args, **kwargs)

    monkeypatch.setattr(drawing, "caption_strip", spy)
    return drawn


def assert_readable_grid(
    path, rows: int, columns: int, cell: int = CELL, row_labels: bool = False
) -> np.ndarray:
    """The PNG is a grid of ``rows`` x ``columns`` cells of ``cell`` px (2 px white separators) in its bottom-right
    corner, under a caption strip with text in it (and a strip of row labels at its left); returns the grid."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("L"))
    grid_h, grid_w = grid_size(rows, columns, tile=cell)
    height, width = array.shape
    assert height >= grid_h + 20, "no room for a caption strip"
    assert (width > grid_w + 20) if row_labels else (width == grid_w)
    top, grid = array[: height - grid_h], array[height - grid_h :, width - grid_w :]
    assert (top < 128).sum() > 100, "the caption strip holds no text"
    for r in range(rows + 1):  # white separators every cell + 2 px: cells are exactly `cell` px
        assert (grid[r * (cell + 2) : r * (cell + 2) + 2] == 255).all()
    for c in range(columns + 1):
        assert (grid[:, c * (cell + 2) : c * (cell + 2) + 2] == 255).all()
    if row_labels:
        left = array[height - grid_h :, : width - grid_w]
        for r in range(rows):  # a label beside every row
            assert (left[2 + r * (cell + 2) : (r + 1) * (cell + 2)] < 128).sum() > 10, f"row {r} unlabelled"
    return grid


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


# -- readable grids: upscaled cells, separators, captions, row labels -------------------------------------------
def test_upscale_factor_gives_cells_of_at_least_48_px():
    assert [pictures.upscale_factor(s, s, 48) for s in (16, 28, 32, 48, 64, 5)] == [3, 2, 2, 1, 1, 10]


def test_render_grid_upscales_with_nearest_and_stays_make_grid_without_keywords():
    images = torch.rand(6, 1, 16, 16)
    assert torch.equal(pictures.render_grid(images, 3), make_grid(images, nrow=3, padding=2, pad_value=1.0))
    big = pictures.render_grid(images, 3, min_cell=48)  # no caption: the upscaled make_grid, exactly
    nearest = images.repeat_interleave(3, dim=2).repeat_interleave(3, dim=3)
    assert torch.equal(big, make_grid(nearest, nrow=3, padding=2, pad_value=1.0))
    assert pictures.render_grid(torch.rand(4, 3, 28, 28), 2, min_cell=48).shape == (3, *grid_size(2, 2, 56))
    captioned = pictures.render_grid(images, 3, caption="six images", min_cell=48)
    assert captioned.shape[2] == big.shape[2] and captioned.shape[1] > big.shape[1] + 15
    assert torch.allclose(captioned[:, -big.shape[1] :], big, atol=1 / 255)  # the grid sits under the caption


def test_samples_png_is_captioned_with_the_sampler(digits, tmp_path, captions):
    model = Copier(digits.images("train")[:50])
    _, ctx = evaluate(model, digits, tmp_path, samples=pictures.SampleGrid(rows=4))
    assert_readable_grid(tmp_path / "samples.png", 4, 4)
    assert captions == ["samples (copies sampler, the model's own), 16 draws"]
    assert ctx.pictures["samples"].shape == (3, *png_size(tmp_path / "samples.png"))  # the loggers' picture


def test_reconstructions_png_labels_test_and_reconstruction_rows(digits, tmp_path, captions):
    model = Copier(digits.images("train")[:50])  # reconstruct(x) == x: every recon. row repeats its test row
    _, ctx = evaluate(
        model, digits, tmp_path, reconstructions=pictures.ReconstructionGrid(columns=5, pairs_of_rows=2)
    )
    grid = assert_readable_grid(tmp_path / "reconstructions.png", 4, 5, row_labels=True)
    pitch = CELL + 2
    for pair in range(2):
        test_row = grid[2 + 2 * pair * pitch : 2 + 2 * pair * pitch + CELL]
        recon_row = grid[2 + (2 * pair + 1) * pitch : 2 + (2 * pair + 1) * pitch + CELL]
        assert np.array_equal(test_row, recon_row)
    expected = digits.images("test")[:5].repeat_interleave(3, dim=2).repeat_interleave(3, dim=3)
    first = torch.from_numpy(grid[2 : 2 + CELL, 2 : 2 + CELL].astype(np.float32) / 255)
    assert torch.allclose(first, expected[0, 0], atol=1 / 255)  # the first test image, upscaled x3
    (caption,) = captions
    assert "test images" in caption and "reconstructions" in caption


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
def test_interpolations_png_size_and_geometry(digits, tmp_path, geometry, captions):
    model = Copier(digits.images("train")[:50], geometry=geometry)
    _, ctx = evaluate(model, digits, tmp_path, interpolations=Interpolations(rows=4, steps=10))
    assert_readable_grid(tmp_path / "interpolations.png", 4, 12)
    assert ctx.pictures["interpolations"].shape == (3, *png_size(tmp_path / "interpolations.png"))
    (caption,) = captions
    assert caption.startswith("interpolations (slerp" if geometry == "sphere" else "interpolations (lerp")
    assert "test image at the left" in caption and "10 points" in caption
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
    assert_readable_grid(tmp_path / "interpolations.png", 3, 10)
    assert ctx.pictures["interpolations"].shape == (3, *png_size(tmp_path / "interpolations.png"))


# -- neighbours and memorisation ---------------------------------------------------------------------------------
class Weighted:
    """A feature source: every third pixel, weighted (a metric other than pixel L2)."""

    name = "weighted"

    def load(self, ctx) -> FeatureExtractor:
        return FeatureExtractor(self.name, lambda x: x.flatten(1)[:, ::3] * torch.linspace(0, 1, 86), "test")


def neighbour_row_height() -> int:
    return CELL + drawing.line_height(drawing.font(neighbours_module.DISTANCE_SIZE)) + 2


def neighbour_lefts(k: int, blocks: int) -> list[int]:
    """x of the first cell of the sample column and of each block: cells of 48 px + 2, a gap between blocks."""
    lefts, x = [], 2
    for columns in [1] + [k] * blocks:
        lefts.append(x)
        x += columns * (CELL + 2) + neighbours_module.BLOCK_GAP
    return lefts


def neighbour_tiles(picture: Tensor, rows: int, k: int, blocks: int) -> Tensor:
    """Cut neighbours.png (3, H, W) back into its 16 px tiles (rows, 1 + blocks * k, 16*16): rows sit at the bottom,
    cells upscaled x3 (every third pixel is the original)."""
    row_h, lefts = neighbour_row_height(), neighbour_lefts(k, blocks)
    xs = [lefts[0]] + [lefts[1 + b] + c * (CELL + 2) for b in range(blocks) for c in range(k)]
    top0 = picture.shape[1] - rows * row_h
    return torch.stack(
        [
            torch.stack([picture[0, y : y + CELL : 3, x : x + CELL : 3] for x in xs])
            for y in (top0 + r * row_h for r in range(rows))
        ]
    ).flatten(2)


@pytest.mark.usefixtures("cache_dir")  # a private $GENBENCH_CACHE for the test distances
def test_neighbours_are_the_true_nearest_in_pixels_and_features(digits, tmp_path):
    evaluator = NearestNeighbours(
        rows=4, k=5, n_samples=20, batch_size=8, chunk_size=300, features=Weighted()
    )
    _, ctx = evaluate(make_vae(4), digits, tmp_path, neighbours=evaluator)
    cut = neighbour_tiles(ctx.pictures["neighbours"], 4, 5, 2)  # (4, 11, 256)
    train = digits.images("train").flatten(1)
    samples = cut[:, 0]
    space = Weighted().load(None)
    for columns, metric in ((slice(1, 6), lambda x: x), (slice(6, 11), space)):
        expected, _ = torch.cdist(metric(samples), metric(train)).topk(5, dim=1, largest=False)  # brute force
        shown = cut[:, columns]  # (4, 5, 256) the training images the figure shows
        got = torch.stack([torch.cdist(metric(samples[r : r + 1]), metric(shown[r]))[0] for r in range(4)])
        assert torch.allclose(got, expected, atol=2e-2)  # 8-bit PNG pixels; ties may swap images


@pytest.mark.usefixtures("cache_dir")  # a private $GENBENCH_CACHE for the test distances
def test_neighbours_png_caption_blocks_divider_distances_and_size(digits, tmp_path, captions, monkeypatch):
    labels: list[str] = []
    draw_label = neighbours_module.draw_label
    monkeypatch.setattr(
        neighbours_module,
        "draw_label",
        lambda draw, xy, text, *a, **kw: labels.append(text) or draw_label(draw, xy, text, *a, **kw),
    )
    model = Copier(digits.images("train"))  # samples are training images: each first pixel neighbour at 0
    evaluate(
        model, digits, tmp_path, neighbours=NearestNeighbours(rows=3, k=4, n_samples=30, features=Weighted())
    )
    height, width = png_size(tmp_path / "neighbours.png")
    lefts = neighbour_lefts(4, 2)
    assert (
        width == lefts[-1] + 4 * (CELL + 2) and height > 3 * neighbour_row_height() + 40
    )  # + caption, titles
    (caption,) = [c for c in captions if c.startswith("nearest training images")]
    assert "pixel space (middle block)" in caption and "weighted feature space (right block)" in caption
    assert "Left column: a model sample" in caption and "L2 distance" in caption
    assert (
        labels[:1] == ["sample"] and "pixel space (L2)" in labels and "weighted feature space (L2)" in labels
    )
    distances = [float(t) for t in labels if t.replace(".", "").replace("e-", "").isdigit()]
    assert len(distances) == 3 * 4 * 2 and distances[0] == 0.0  # one under every neighbour
    with Image.open(tmp_path / "neighbours.png") as image:
        array = np.asarray(image.convert("RGB")).astype(int)
    for left in lefts[1:]:  # a grey divider runs down the middle of each gap between blocks
        gap = array[
            -3 * neighbour_row_height() :, left - neighbours_module.BLOCK_GAP : left
        ]  # beside the rows
        grey = (gap == neighbours_module.DIVIDER).all(axis=2).all(axis=0)
        assert grey.sum() == neighbours_module.DIVIDER_WIDTH


@pytest.mark.usefixtures("cache_dir")  # a private $GENBENCH_CACHE for the test distances
def test_neighbours_without_features_and_memorisation_of_copies(digits, tmp_path, captions):
    model = Copier(digits.images("train"))
    results, _ = evaluate(
        model, digits, tmp_path, neighbours=NearestNeighbours(rows=8, k=5, n_samples=64, chunk_size=500)
    )
    height, width = png_size(tmp_path / "neighbours.png")
    assert width == neighbour_lefts(5, 1)[-1] + 5 * (CELL + 2) and height > 8 * neighbour_row_height()
    assert any(c.startswith("nearest training images") and "feature" not in c for c in captions)
    assert results["memorisation_ratio@copies"] < 0.01  # samples are training images
    assert results["protocols"]["memorisation_ratio@copies"]["n_samples"] == 64


@pytest.mark.usefixtures("cache_dir")  # a private $GENBENCH_CACHE for the test distances
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
    height, width = png_size(tmp_path / "latent_scatter.png")  # make_grid leaves a single image unpadded
    assert width == 128 and height > 128 + 20  # under its caption
    assert_readable_grid(tmp_path / "latent_manifold.png", 6, 6)
    with Image.open(tmp_path / "latent_scatter.png") as image:  # coloured dots, not a blank canvas
        assert len(set(image.convert("RGB").getdata())) > 5


def test_latent_plane_skipped_for_other_sizes(digits, tmp_path):
    results, ctx = evaluate(make_vae(4), digits, tmp_path, latent_plane=LatentPlane(n_points=50))
    results.pop("eval_seconds", None)  # evaluation timings, not results
    assert not ctx.pictures and not list(tmp_path.glob("latent_*.png")) and results == {}


def test_default_config_builds_the_picture_evaluators():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "eval" / "default.yaml")
    built = {
        name: instantiate(conf.evaluators[name])
        for name in ("interpolations", "neighbours", "latent_plane", "losses", "samples", "reconstructions")
    }
    assert isinstance(built["interpolations"], Interpolations) and built["interpolations"].steps == 10
    assert isinstance(built["losses"], LossCurves) and built["losses"].min_points == 10
    assert built["samples"].min_cell == built["reconstructions"].min_cell == CELL
    fast = OmegaConf.load(REPO / "conf" / "eval" / "fast.yaml")
    assert "losses" in fast.evaluators
    assert isinstance(built["neighbours"], NearestNeighbours) and built["neighbours"].k == 5
    assert isinstance(built["latent_plane"], LatentPlane) and built["latent_plane"].grid == 20


# -- loss curves -------------------------------------------------------------------------------------------------
def write_csv(path: Path, rows: list[dict[str, float]]) -> Path:
    """A Lightning CSVLogger file: sorted header, empty cells where a key was not logged that row."""
    import csv

    keys = sorted({k for r in rows for k in r})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


def loss_context(run_dir: Path) -> EvalContext:
    return EvalContext(model=None, datamodule=None, run_dir=run_dir, device=torch.device("cpu"))


def test_read_curves_skips_empty_cells_and_groups_train_val_and_periodic_panels(tmp_path):
    rows = [{"epoch": i // 10, "step": i, "train/loss": 1 / (i + 1), "train/kl": 0.1 * i} for i in range(30)]
    rows += [{"epoch": e, "step": 10 * e + 9, "val/loss": 0.5 / (e + 1)} for e in range(3)]
    rows += [{"step": 10 * e + 9, "eval_periodic/fid_classifier@prior": 50.0 - e} for e in range(2)]
    rows += [{"step": 30, "eval/fid_classifier@prior": 40.0}]  # final evaluation: not a curve
    curves = read_curves(write_csv(tmp_path / "csv" / "metrics.csv", rows))
    assert sorted(curves) == ["eval_periodic/fid_classifier@prior", "train/kl", "train/loss", "val/loss"]
    assert len(curves["train/loss"].points) == 30 and curves["val/loss"].points[0] == (9.0, 0.5)
    shown = panels(curves)
    assert [p.title for p in shown] == ["kl", "loss", "eval_periodic/fid_classifier@prior"]
    assert [s.key for s in shown[1].series] == ["train/loss", "val/loss"]


def test_sparse_csv_is_drawn_as_dots_and_recorded_as_skipped(tmp_path, captions):
    rows = [{"epoch": 0, "step": 49, "train/loss": 3.0}, {"epoch": 1, "step": 99, "train/loss": 2.0}]
    write_csv(tmp_path / "csv" / "metrics.csv", rows)
    (tmp_path / "config.yaml").write_text("trainer:\n  log_every_n_steps: 50\n")
    ctx = loss_context(tmp_path)
    LossCurves(min_points=10)(ctx)
    note = ctx.records["skipped"]["losses"]
    assert "train/* (1 series, 2 points each" in note and "trainer.log_every_n_steps" in note and "50" in note
    assert (tmp_path / "losses.png").is_file() and note in captions[0]


def test_losses_skipped_without_a_csv_log(tmp_path):
    ctx = loss_context(tmp_path)
    assert LossCurves()(ctx) == {}
    assert "no CSV log" in ctx.records["skipped"]["losses"] and not (tmp_path / "losses.png").exists()


def test_losses_png_of_a_real_tiny_run_has_one_panel_per_term(tmp_path, captions):
    """A digits VAE trained for 2 epochs, logging every step; losses.png redrawn here from its CSV."""
    evaluators = "+eval.evaluators.losses={_target_:genbench.evaluators.losses.LossCurves,columns:2}"
    env = {**os.environ, "GENBENCH_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "genbench", "model=vae", "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
         "eval=none", evaluators, f"hydra.run.dir={run}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "losses.png").is_file()
    curves = read_curves(run / "csv" / "metrics.csv")
    terms = {key.split("/", 1)[1] for key in curves if key.split("/")[0] in ("train", "val")}
    assert {"loss", "kl", "recon"} <= terms
    assert all(len(curves[f"train/{t}"].points) >= 20 for t in ("loss", "kl", "recon"))  # every step logged
    record = read_record(run)
    assert "val/*" in record["skipped"]["losses"] and "train/*" not in record["skipped"]["losses"]
    ctx = loss_context(run)  # the same picture, drawn again here to count its panels
    LossCurves(columns=2, panel_width=320, panel_height=210)(ctx)
    assert [p.title for p in panels(curves)] == sorted(terms)
    height, width = png_size(run / "losses.png")
    body = math.ceil(len(terms) / 2) * 210
    assert width == 2 * 320 and height > body + 20  # 2 columns of panels under the caption
    assert ctx.pictures["losses"].shape == (3, height, width)
    assert captions[0].startswith("training curves from csv/metrics.csv") and "every step (" in captions[0]
