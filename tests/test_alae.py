"""MLP-ALAE: equalised linear layers, the three updates, R1, and a short real run on the bundled digits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from genbench.data import ImageDataModule
from genbench.data.sources import DigitsSource
from genbench.models.alae import ALAE, OPTIMIZER_STEPS_PER_BATCH
from genbench.nets.mlp import EqualizedLinear

CONF = Path(__file__).resolve().parents[1] / "conf"
RUN_BATCHES = 200


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def tiny_model(*overrides: str) -> ALAE:
    return instantiate(composed("experiment=alae_tiny", *overrides).model)


def digits(cache_dir: Path) -> ImageDataModule:
    return ImageDataModule(
        name="digits",
        source=DigitsSource,
        root=None,
        image_size=16,
        channels=1,
        batch_size=64,
        cache_dir=str(cache_dir),
    )


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These nets are tiny: on a busy 2-core machine two OpenMP threads spin-wait on each other (measured ~100x
    slower than one thread here), so this module runs single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trainer(**limits) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **limits,
    )


# -- equalised learning rate -------------------------------------------------------------------------------------
@pytest.mark.parametrize("lr_multiplier", [1.0, 0.1])
def test_equalized_linear_has_he_scaling(lr_multiplier):
    layer = EqualizedLinear(1024, 512, lr_multiplier=lr_multiplier)
    assert layer.weight_scale == pytest.approx(math.sqrt(2.0 / 1024) * lr_multiplier)
    assert layer.weight.std().item() == pytest.approx(
        1.0 / lr_multiplier, rel=0.02
    )  # stored without the He scale
    y = layer(torch.randn(2048, 1024))
    assert y.var().item() == pytest.approx(2.0, rel=0.05)  # He: Var(y) = fan_in * (2 / fan_in) * Var(x)


@pytest.mark.parametrize("lr_multiplier", [1.0, 0.1])
def test_equalized_linear_gradients_carry_the_runtime_scale(lr_multiplier):
    layer = EqualizedLinear(64, 32, lr_multiplier=lr_multiplier)
    with torch.no_grad():
        layer.bias.normal_()
    w_eff = (layer.weight * layer.weight_scale).detach().requires_grad_(True)
    b_eff = (layer.bias * lr_multiplier).detach().requires_grad_(True)
    x, r = torch.randn(16, 64), torch.randn(16, 32)
    (layer(x) * r).sum().backward()
    (F.linear(x, w_eff, b_eff) * r).sum().backward()
    torch.testing.assert_close(layer.weight.grad, layer.weight_scale * w_eff.grad)
    torch.testing.assert_close(layer.bias.grad, lr_multiplier * b_eff.grad)


# -- the losses --------------------------------------------------------------------------------------------------
def test_r1_matches_per_image_autograd():
    model = tiny_model()
    x = torch.rand(6, 1, 16, 16)
    r1 = model.discriminator_loss(x)["r1"]
    direct = []
    for image in x:
        signed = (image[None] * 2 - 1).requires_grad_(True)
        (grad,) = torch.autograd.grad(model.discriminator(model.encoder(signed)).sum(), signed)
        direct.append(grad.pow(2).sum())
    torch.testing.assert_close(r1, torch.stack(direct).mean())
    assert r1.requires_grad  # it is differentiated again as part of loss_d


@pytest.mark.parametrize(
    "step, trained",
    [
        ("_discriminator_step", {"encoder", "discriminator"}),
        ("_generator_step", {"mapping", "generator"}),
        ("_autoencoder_step", {"generator", "encoder"}),
    ],
)
def test_each_update_changes_only_its_own_networks(step, trained, monkeypatch, tmp_path):
    model = tiny_model()
    skipped = {
        "_discriminator_step": {"loss_d": torch.zeros(()), "r1": torch.zeros(())},
        "_generator_step": torch.zeros(()),
        "_autoencoder_step": torch.zeros(()),
    }
    for name, result in skipped.items():
        if name != step:
            monkeypatch.setattr(model, name, lambda *args, result=result: result)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer(max_epochs=1, limit_train_batches=1).fit(model, datamodule=digits(tmp_path))
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    expected = {k for k in before if k.split(".")[0] in trained}
    assert changed == expected


# -- a short real run --------------------------------------------------------------------------------------------
class _History(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append({k: float(v) for k, v in outputs.items()})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    torch.manual_seed(0)
    model, history = tiny_model(), _History()
    fit = trainer(max_epochs=100, max_steps=RUN_BATCHES * OPTIMIZER_STEPS_PER_BATCH, callbacks=[history])
    fit.fit(model, datamodule=digits(tmp_path_factory.mktemp("cache")))
    return fit, model, history.losses


def test_runs_200_batches_without_nan(tiny_run):
    fit, model, losses = tiny_run
    assert len(losses) == RUN_BATCHES and fit.global_step == RUN_BATCHES * OPTIMIZER_STEPS_PER_BATCH
    assert all(math.isfinite(v) for step in losses for v in step.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert {"train/loss_d", "train/loss_g", "train/loss_ae", "train/r1"} <= set(fit.callback_metrics)


def test_latent_autoencoder_loss_falls(tiny_run):
    _, _, losses = tiny_run
    ae = [step["loss_ae"] for step in losses]
    assert sum(ae[-20:]) / 20 < 0.5 * sum(ae[:20]) / 20


def test_samples_and_reconstructions_are_images_in_unit_range(tiny_run):
    _, model, _ = tiny_run
    model.eval()
    with torch.no_grad():
        samples = model.sample(10, generator=torch.Generator().manual_seed(1))
        again = model.sample(10, generator=torch.Generator().manual_seed(1))
        x = torch.rand(5, 1, 16, 16)
        recon = model.reconstruct(x)
    assert samples.shape == (10, 1, 16, 16) and recon.shape == x.shape
    assert model.encode(x).shape == (5, model.latent_dim)
    for images in (samples, recon):
        assert images.min() >= 0.0 and images.max() <= 1.0
    torch.testing.assert_close(samples, again)
    assert samples.std(dim=0).mean() > 0.01  # not collapsed to a single image


def test_truncation_pulls_samples_to_the_running_average_saved_in_checkpoints(tiny_run, tmp_path):
    fit, model, _ = tiny_run
    assert model.w_avg.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        model.truncation_psi = 0.0
        collapsed = model.sample(3, generator=torch.Generator().manual_seed(0))
        model.truncation_psi = None
    torch.testing.assert_close(collapsed, model.decode(model.w_avg[None]).expand(3, -1, -1, -1))
    fit.save_checkpoint(tmp_path / "alae.ckpt")
    saved = torch.load(tmp_path / "alae.ckpt", weights_only=True)["state_dict"]["w_avg"]
    torch.testing.assert_close(saved, model.w_avg)


# -- configs -----------------------------------------------------------------------------------------------------
def test_fc_networks_size_from_the_data_config():
    model = tiny_model("data=celeba")  # 3 x 64 x 64
    with torch.no_grad():
        assert model.sample(2).shape == (2, 3, 64, 64)
        assert model.reconstruct(torch.rand(2, 3, 64, 64)).shape == (2, 3, 64, 64)


@pytest.mark.parametrize(
    "experiment, data", [("alae_mnist", "mnist"), ("alae_fashion_mnist", "fashion_mnist")]
)
def test_experiments_use_the_official_mnist_fc_settings(experiment, data):
    cfg = composed(f"experiment={experiment}")
    assert (cfg.data.name, cfg.data.batch_size, cfg.trainer.max_epochs) == (data, 128, 400)
    model = instantiate(cfg.model)
    assert model.latent_dim == 50 and len(model.mapping.net) == 2 * 6
    assert model.r1_gamma == 10.0 and model.betas == (0.0, 0.99) and model.w_avg_beta == 0.995
    assert [o.defaults["lr"] for o in model.configure_optimizers()] == [0.002, 0.002]
    assert model.truncation_psi is None
