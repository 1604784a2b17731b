"""GLO: the DCGAN generator, Lap1, the row-wise code optimiser, training on digits, checkpoints rebuilt from config,
latent inversion and the per-rank code table under DDP (gloo, 2 CPU processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from pytorch_lightning.callbacks import ModelCheckpoint

from genbench import losses
from genbench.codes import CodeTable, pca_codes
from genbench.data import ImageDataModule
from genbench.data.sampler import partition_indices
from genbench.data.sources import DigitsSource
from genbench.evaluators.base import EvalContext
from genbench.evaluators.reconstruction import reconstruction_mse
from genbench.inversion import best_of_candidates, invert
from genbench.latent import GaussianSampler, project
from genbench.models.glo import GLO
from genbench.nets.dcgan import DCGANGenerator

REPO = Path(__file__).resolve().parents[1]
# A small GLO for digits (16x16): fast on two busy CPU cores.
SMALL = ["data=digits", "model=glo", "model.latent_dim=16", "model.generator.width=16", "seed=0"]


def compose_config(overrides: list[str], cache_dir: Path):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[*overrides, f"data.cache_dir={cache_dir}"])


def digits(cache_dir: Path, batch_size: int = 64) -> ImageDataModule:
    return ImageDataModule(
        name="digits",
        source=DigitsSource,
        root=None,
        image_size=16,
        channels=1,
        batch_size=batch_size,
        cache_dir=str(cache_dir),
    )


def small_glo(latent_dim: int = 8, **kwargs) -> GLO:
    generator = partial(DCGANGenerator, channels=1, image_size=16, width=8)
    return GLO(generator=generator, sampler=partial(GaussianSampler), latent_dim=latent_dim, **kwargs)


def cpu_trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**defaults, **kwargs})


# -- the generator ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, stride2_blocks", [(16, 2), (28, 2), (32, 3), (64, 4), (128, 5)])
@pytest.mark.parametrize("kernel_size", [3, 4])
def test_dcgan_generator_sizes_and_range(size, stride2_blocks, kernel_size):
    net = DCGANGenerator(
        channels=3, image_size=size, in_features=5, width=4, kernel_size=kernel_size, output="tanh"
    )
    x = net(torch.randn(2, 5) * 10)
    assert x.shape == (2, 3, size, size)
    assert x.min() >= 0 and x.max() <= 1
    deconvs = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [m.stride[0] for m in deconvs] == [1] + [2] * stride2_blocks  # the base-grid lift, then the blocks
    assert deconvs[0].kernel_size[0] == (7 if size == 28 else 4)


def test_dcgan_widths_follow_dcgan():
    net = DCGANGenerator(channels=3, image_size=64, in_features=100, width=64)
    widths = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert widths == [512, 256, 128, 64, 3]  # ngf*8 at 4x4 ... ngf at 32x32, then the image


# -- Lap1 ---------------------------------------------------------------------------------------------------------


def _lap1_numpy(x: np.ndarray, y: np.ndarray, levels: int) -> np.ndarray:
    """Direct Lap1 per image with numpy loops: 2D binomial kernel, reflect padding, zero-insertion upsampling."""
    k1 = np.array([1, 4, 6, 4, 1], dtype=np.float64) / 16
    kernel = np.outer(k1, k1)

    def blur(img):
        padded = np.pad(img, 2, mode="reflect")
        out = np.zeros_like(img)
        for i in range(img.shape[0]):
            for j in range(img.shape[1]):
                out[i, j] = (padded[i : i + 5, j : j + 5] * kernel).sum()
        return out

    def pyramid(img):
        bands = []
        for _ in range(levels):
            down = blur(img)[::2, ::2]
            up = np.zeros((2 * down.shape[0], 2 * down.shape[1]))
            up[::2, ::2] = down
            bands.append(img - 4 * blur(up)[: img.shape[0], : img.shape[1]])
            img = down
        return bands + [img]

    out = np.zeros(x.shape[0])
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for j, (a, b) in enumerate(zip(pyramid(x[n, c]), pyramid(y[n, c]), strict=True)):
                out[n] += 2.0 ** (-2 * j) * np.abs(a - b).sum()
    return out


def test_lap1_is_zero_for_identical_images_and_matches_a_direct_computation():
    x = torch.rand(3, 2, 16, 16, dtype=torch.float64)
    assert torch.equal(losses.lap1(x, x), torch.zeros(3, dtype=torch.float64))
    shifted = torch.roll(x, shifts=1, dims=-1)
    value = losses.lap1(shifted, x)
    assert (value > 0).all()
    assert losses.default_pyramid_levels(16) == 2
    np.testing.assert_allclose(value.numpy(), _lap1_numpy(shifted.numpy(), x.numpy(), levels=2), rtol=1e-10)


def test_laplacian_pyramid_collapses_back_to_the_image():
    x = torch.rand(2, 3, 28, 28, dtype=torch.float64)
    bands = losses.laplacian_pyramid(x, 2)
    assert [b.shape[-1] for b in bands] == [28, 14, 7]
    image = bands[-1]
    for band in reversed(bands[:-1]):
        image = band + losses.pyramid_upsample(image, band.shape[-2:])
    torch.testing.assert_close(image, x)


# -- the code table -----------------------------------------------------------------------------------------------


def test_row_adam_matches_torch_adam_on_each_row_and_leaves_other_rows_alone():
    table = CodeTable(6, 3, projection="none", optimizer="adam", betas=(0.9, 0.99))
    table.weight.copy_(torch.randn(6, 3))
    start = table.weight.clone()
    reference = start[[1, 4]].clone().requires_grad_(True)  # rows 1 and 4 under a dense torch Adam
    torch_adam = torch.optim.Adam([reference], lr=0.1, betas=(0.9, 0.99))
    for step in range(4):
        grad = torch.randn(2, 3)
        table.update(torch.tensor([1, 4]), grad, lr=0.1)
        reference.grad = grad
        torch_adam.step()
        if step == 1:  # a different batch in between: rows 1 and 4 must not move (no stale-moment drift)
            before = table.weight[[1, 4]].clone()
            table.update(torch.tensor([0, 2]), torch.randn(2, 3), lr=0.1)
            assert torch.equal(table.weight[[1, 4]], before)
    torch.testing.assert_close(table.weight[[1, 4]], reference.detach())
    assert torch.equal(table.weight[[3, 5]], start[[3, 5]])  # never in a batch
    assert table.steps.tolist() == [1, 4, 1, 0, 4, 0]


def test_row_sgd_with_momentum_matches_torch_sgd():
    table = CodeTable(4, 2, projection="none", optimizer="sgd", momentum=0.9)
    table.weight.copy_(torch.randn(4, 2))
    reference = table.weight[[2]].clone().requires_grad_(True)
    torch_sgd = torch.optim.SGD([reference], lr=0.5, momentum=0.9)
    for _ in range(3):
        grad = torch.randn(1, 2)
        table.update(torch.tensor([2]), grad, lr=0.5)
        reference.grad = grad
        torch_sgd.step()
    torch.testing.assert_close(table.weight[[2]], reference.detach())


@pytest.mark.parametrize("projection", ["sphere", "ball"])
def test_codes_stay_on_the_sphere_or_in_the_ball_after_steps(projection):
    table = CodeTable(50, 4, projection=projection)
    table.weight.copy_(project(torch.randn(50, 4) * 0.3, projection))
    for _ in range(20):
        index = torch.randint(0, 50, (16,))  # duplicates too: their gradients are summed
        table.update(index, torch.randn(16, 4) * 10, lr=0.5)
    norms = table.weight.norm(dim=1)
    if projection == "sphere":
        torch.testing.assert_close(norms, torch.ones(50))
    else:
        assert (norms <= 1 + 1e-6).all() and (norms < 0.999).any()


def test_table_resizes_to_the_checkpoint_it_loads():
    trained = small_glo(n_codes=7)
    trained.codes.weight.copy_(torch.randn(7, 8))
    rebuilt = small_glo()  # n_codes: null, as a model rebuilt from a run's config.yaml
    assert len(rebuilt.codes) == 0
    rebuilt.load_state_dict(trained.state_dict())
    assert torch.equal(rebuilt.codes.weight, trained.codes.weight)


def test_pca_init_matches_an_exact_svd(tmp_path):
    basis = torch.linalg.qr(torch.randn(64, 4)).Q.T  # (4, 64): four directions of decreasing variance + noise
    coefficients = torch.randn(300, 4) * torch.tensor([300.0, 150.0, 80.0, 40.0])
    pixels = 128 + coefficients @ basis + 2 * torch.randn(300, 64)
    images = pixels.clamp(0, 255).round().to(torch.uint8).view(300, 1, 8, 8)
    codes = pca_codes(images, dim=4, device=torch.device("cpu"), fit_images=300)
    x = images.flatten(1).double() / 255
    x = x - x.mean(dim=0)
    exact = x @ torch.linalg.svd(x, full_matrices=False).Vh[:4].T
    exact = exact / exact.pow(2).sum(dim=1).mean().sqrt()
    signs = torch.sign((codes.double() * exact).sum(dim=0))  # components are defined up to sign
    torch.testing.assert_close(codes.double() * signs, exact, atol=2e-3, rtol=0)


# -- inversion ----------------------------------------------------------------------------------------------------


def test_inversion_recovers_the_code_that_generated_an_image():
    decoder = DCGANGenerator(channels=1, image_size=16, in_features=8, width=16, batch_norm=False).eval()
    z_true = project(torch.randn(16, 8), "sphere")
    x = decoder(z_true).detach()
    start = best_of_candidates(decoder, x, project(torch.randn(256, 8), "sphere"))
    before = [p.clone() for p in decoder.parameters()]
    with torch.no_grad():  # as in evaluation loops: invert turns gradients back on for the codes only
        z = invert(
            decoder, x, start, steps=150, lr=0.05, per_image_loss=losses.squared_error, projection="sphere"
        )
    assert (z - z_true).norm(dim=1).max() < 1e-2
    assert all(torch.equal(a, b) for a, b in zip(before, decoder.parameters(), strict=True))
    assert all(p.grad is None for p in decoder.parameters())


# -- training on digits ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small GLO trained 4 epochs on digits from the Hydra config, with a last.ckpt."""
    root = tmp_path_factory.mktemp("glo")
    cfg = compose_config(SMALL, root / "cache")
    pl.seed_everything(0)
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)
    trainer = cpu_trainer(max_epochs=4, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(model, datamodule)
    model.eval()
    return cfg, datamodule, model, root / "checkpoints" / "last.ckpt"


def test_training_lowers_recon_mse_below_the_mean_image(trained):
    _, datamodule, model, _ = trained
    ctx = EvalContext(model=model, datamodule=datamodule, run_dir=Path("."), device=torch.device("cpu"))
    train_images = datamodule.images("train")
    mean_image_mse = float((train_images - train_images.mean(dim=0)).pow(2).mean())
    with torch.no_grad():  # as the Evaluation callback runs it
        recon_train = reconstruction_mse(ctx, "train", None, 500)
        recon_test = reconstruction_mse(ctx, "test", 64, 64)  # by inversion: 100 Adam steps per batch
    assert recon_train < 0.25 * mean_image_mse, (recon_train, mean_image_mse)
    assert recon_test < 0.5 * mean_image_mse, (recon_test, mean_image_mse)
    torch.testing.assert_close(model.codes.weight.norm(dim=1), torch.ones(len(model.codes)))  # sphere


def test_checkpoint_rebuilt_from_config_restores_codes_and_sampler(trained):
    cfg, datamodule, model, last = trained
    checkpoint = torch.load(last, weights_only=True)
    state = checkpoint["state_dict"]
    assert state["codes.table.weight"].shape == (len(datamodule.split("train")), 16)
    assert bool(state["codes.sampler.fitted"])  # fitted at the end of training, before the last checkpoint
    torch.testing.assert_close(state["codes.sampler.mean"], model.codes.weight.double().mean(dim=0).float())
    rebuilt = instantiate(cfg.model)  # n_codes: null, as `evaluate` does from the run's config.yaml
    rebuilt.load_state_dict(state)
    rebuilt.eval()
    index = torch.arange(10)
    x = datamodule.images("train", index)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.reconstruct(x, index), model.reconstruct(x, index))
        samples = rebuilt.sample(6, torch.Generator().manual_seed(0))
        torch.testing.assert_close(samples, model.sample(6, torch.Generator().manual_seed(0)))
    assert samples.shape == (6, 1, 16, 16) and rebuilt.sampler_name == "gaussian"
    assert rebuilt.encode(x[:4]).shape == (4, 16)


def test_only_the_rows_in_a_batch_change_with_adam(tmp_path):
    """Two epochs of 3 batches: rows trained in epoch 1 but not in epoch 2 must not move in epoch 2."""

    class Record(pl.Callback):
        def __init__(self):
            self.tables, self.seen = [], []

        def on_train_epoch_start(self, trainer, module):
            self.tables.append(module.codes.weight.clone())
            self.seen.append([])

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.seen[-1].append(batch.index.clone())

        def on_train_end(self, trainer, module):
            self.tables.append(module.codes.weight.clone())

    record = Record()
    model = small_glo(init="gaussian", projection="ball", optimizer="adam", l2_weight=1.0, lap1_weight=0.5)
    cpu_trainer(max_epochs=2, limit_train_batches=3, callbacks=[record]).fit(model, digits(tmp_path))
    start, middle, end = record.tables
    n = len(start)
    for before, after, seen in ((start, middle, record.seen[0]), (middle, end, record.seen[1])):
        in_batch = torch.zeros(n, dtype=torch.bool)
        in_batch[torch.cat(seen)] = True
        assert torch.equal(after[~in_batch], before[~in_batch])
        assert (after[in_batch] != before[in_batch]).any(dim=1).all()
    assert (end.norm(dim=1) <= 1 + 1e-6).all()
    moved_then_idle = torch.zeros(n, dtype=torch.bool)
    moved_then_idle[torch.cat(record.seen[0])] = True
    moved_then_idle[torch.cat(record.seen[1])] = False
    assert moved_then_idle.sum() > 50  # the case dense Adam gets wrong is really exercised


def test_generator_normalize_input_sees_only_the_codes_direction():
    g = DCGANGenerator(channels=1, image_size=16, in_features=8, width=8, normalize_input=True).eval()
    z = torch.randn(4, 8).requires_grad_(True)
    with torch.no_grad():
        torch.testing.assert_close(g(z), g(25.0 * z))
        torch.testing.assert_close(g(z), g(z / z.norm(dim=1, keepdim=True)))
    g(z).sum().backward()  # the norm is held constant: the gradient is the plain one divided by it
    plain = DCGANGenerator(channels=1, image_size=16, in_features=8, width=8).eval()
    plain.load_state_dict(g.state_dict())
    u = (z.detach() / z.detach().norm(dim=1, keepdim=True)).requires_grad_(True)
    plain(u).sum().backward()
    torch.testing.assert_close(z.grad, u.grad / z.detach().norm(dim=1, keepdim=True))


def test_glo_init_std_sets_the_scale_of_unprojected_starting_codes():
    model = small_glo(latent_dim=16, init="gaussian", init_std=0.01, projection="none")
    model.codes.prepare(2000, None, torch.device("cpu"), seed=0)
    assert model.codes.weight.std().item() == pytest.approx(0.01, rel=0.05)


# -- configs ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=glann_mnist_glo"],
        ["experiment=glo_celeba128"],
        ["experiment=glo_frogs"],
        *[["model=glo", f"model/sampler={name}"] for name in ("normal", "diagonal", "gaussian", "imle")],
    ],
)
def test_configs_build_the_model(overrides, tmp_path):
    cfg = compose_config(overrides, tmp_path)
    model = instantiate(cfg.model)
    assert isinstance(model, GLO)
    z = torch.randn(2, model.latent_dim)
    size = cfg.data.image_size
    with torch.no_grad():
        assert model.eval().decode(z).shape == (2, cfg.data.channels, size, size)
    expected = {"glann_mnist_glo": "imle", "glo_celeba128": "diagonal", "glo_frogs": "gaussian"}
    name = overrides[0].split("=")[1]
    assert model.sampler_name == expected.get(name, overrides[-1].split("=")[-1])


# -- DDP ----------------------------------------------------------------------------------------------------------


DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    from functools import partial
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint
    from genbench.data import ImageDataModule
    from genbench.data.sources import DigitsSource
    from genbench.latent import GaussianSampler
    from genbench.models.glo import GLO
    from genbench.nets.dcgan import DCGANGenerator

    out = sys.argv[1]
    torch.set_num_threads(1)

    class Record(pl.Callback):
        def on_train_start(self, trainer, module):
            self.initial, self.seen = module.codes.weight.clone(), []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.seen.append(batch.index.clone())

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.held = module.codes.weight.clone()  # before GLO's own hook gathers the shards

        def on_train_end(self, trainer, module):
            torch.save({
                "n": len(trainer.datamodule.split("train")), "initial": self.initial, "seen": torch.cat(self.seen),
                "held": self.held,
                "whole": module.codes.weight.clone(), "params": [p.detach().clone() for p in module.generator.parameters()],
                "buffers": [b.clone() for b in module.generator.buffers()],
            }, f"{out}/rank{trainer.global_rank}.pt")

    pl.seed_everything(0)
    dm = ImageDataModule(name="digits", source=DigitsSource, root=None, image_size=16, channels=1, batch_size=64,
                         cache_dir=out + "/cache")
    model = GLO(partial(DCGANGenerator, channels=1, image_size=16, width=8), partial(GaussianSampler), latent_dim=8)
    trainer = pl.Trainer(accelerator="cpu", strategy="ddp", devices=2, max_epochs=3, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         callbacks=[Record(), ModelCheckpoint(dirpath=out, save_last=True)])
    trainer.fit(model, dm)
    """
)


def test_lightning_ddp_trains_every_code_and_saves_the_whole_table(tmp_path):
    """GLO itself under Lightning's DDP (2 CPU processes, gloo), in a subprocess so the launcher can re-run it."""
    script = tmp_path / "train_ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    n = ranks[0]["n"]
    shards = partition_indices(n, 2, seed=0)
    for r in range(2):  # each rank only saw, and only trained, its own shard
        assert torch.isin(ranks[r]["seen"], shards[r]).all()
    for a, b in zip(
        ranks[0]["params"] + ranks[0]["buffers"], ranks[1]["params"] + ranks[1]["buffers"], strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    whole = ranks[0]["whole"]
    assert torch.equal(whole, ranks[1]["whole"])
    for r in range(2):
        assert torch.equal(whole[shards[r]], ranks[r]["held"][shards[r]])
    # Every code was in some batch within 3 epochs (a fixed seed: deterministic), and every code was trained.
    all_seen = torch.cat([ranks[0]["seen"], ranks[1]["seen"]])
    assert len(torch.unique(all_seen)) == n
    assert (whole != ranks[0]["initial"]).any(dim=1).all()
    # Rank 0's checkpoint holds the whole table, optimiser state included: each row's update count is exact.
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(saved["codes.table.weight"], whole)
    assert torch.equal(saved["codes.table.steps"], torch.bincount(all_seen, minlength=n))
    assert bool(saved["codes.sampler.fitted"])


# -- the published setting does not collapse ----------------------------------------------------------------------


def _held_out_r2(images: torch.Tensor, codes: torch.Tensor, n_fit: int) -> float:
    """R^2 of a ridge regression from pixels to codes, fitted on the first ``n_fit`` images, on the rest: how much of
    the codes the images explain. Random codes (a table that never organised) give ~0."""
    x = images.flatten(1).double()
    x, y = x - x.mean(0), codes.double() - codes.double().mean(0)
    a, b = slice(0, n_fit), slice(n_fit, None)
    w = torch.linalg.solve(x[a].T @ x[a] + torch.eye(x.shape[1], dtype=torch.double), x[a].T @ y[a])
    return 1 - float(((x[b] @ w - y[b]) ** 2).sum() / (y[b] ** 2).sum())


@pytest.mark.parametrize("correction", ["global", "row"])
def test_published_glo_setting_organises_its_codes_with_sparse_adam_updates(correction, tmp_path):
    """GLANN's setting (Gaussian init on the sphere, Adam betas (0.5, 0.999), codes at 1e-2, G at 1e-3): with
    SparseAdam's updates (``global``, what the paper's code does) the codes come to carry the images within 20
    epochs and the decoder fits them; with row-wise bias correction at the same nominal rate the codes barely move
    from their random start, the decoder memorises random codes, reconstructions blur and samples collapse (the
    MNIST observation: recall 0.00). Measured on digits: R^2 0.30-0.37 vs 0.03-0.05, MSE 0.0028 vs 0.0058."""
    torch.manual_seed(0)
    generator = partial(DCGANGenerator, channels=1, image_size=16, width=16, output="sigmoid")
    model = GLO(
        generator=generator, sampler=partial(GaussianSampler), latent_dim=32, init="gaussian",
        projection="sphere", lr_generator=1e-3, lr_codes=1e-2, betas=(0.5, 0.999), code_bias_correction=correction,
    )  # fmt: skip
    datamodule = digits(tmp_path)
    cpu_trainer(max_epochs=20).fit(model, datamodule)
    images = datamodule.split("train").images.float() / 255
    r2 = _held_out_r2(images, model.codes.weight, 1000)
    model.eval()
    with torch.no_grad():
        mse = float((model.decode(model.codes.weight) - images).pow(2).mean())
    if correction == "global":
        assert r2 > 0.2 and mse < 0.0045, (r2, mse)
    else:  # the failure this setting had: documented, so a change of the row-wise rule is noticed
        assert r2 < 0.15 and mse > 0.0045, (r2, mse)
