"""VAE / MMD-VAE maths and a short training run."""

from __future__ import annotations

from functools import partial

import pytest
import pytorch_lightning as pl
import torch

from genbench import losses
from genbench.data import ImageDataModule
from genbench.data.sources import DigitsSource
from genbench.models.vae import VAE
from genbench.nets.conv import ConvDecoder, ConvEncoder


def make_vae(**kwargs) -> VAE:
    return VAE(
        encoder=partial(ConvEncoder, channels=1, image_size=16, base_width=16),
        decoder=partial(ConvDecoder, channels=1, image_size=16, base_width=16),
        latent_dim=4,
        **kwargs,
    )


def test_kl_matches_torch_distributions():
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(losses.gaussian_kl(mu, logvar), expected, atol=1e-5)


@pytest.mark.parametrize("kernel", ["gaussian", "imq"])
def test_mmd_zero_for_identical_and_positive_for_shifted(kernel):
    x = torch.randn(256, 2)
    assert losses.mmd(x, x.clone(), kernel).abs() < 1e-6
    shifted = losses.mmd(x, torch.randn(256, 2) + 2.0, kernel)
    same_law = losses.mmd(x, torch.randn(256, 2), kernel)
    assert shifted > 0.2 and shifted > 10 * same_law


def test_gaussian_kernel_is_the_posts():
    x, y = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    assert torch.allclose(losses.gaussian_kernel(x, y), torch.exp(torch.tensor([[-1.0]])))


@pytest.mark.parametrize("divergence,likelihood", [("kl", "bernoulli"), ("mmd", "gaussian")])
def test_contract_shapes_and_range(divergence, likelihood):
    model = make_vae(divergence=divergence, likelihood=likelihood).eval()
    x = torch.rand(6, 1, 16, 16)
    assert model.encode(x).shape == (6, 4)
    for out in (model.decode(torch.randn(6, 4)), model.reconstruct(x), model.sample(6)):
        assert out.shape == (6, 1, 16, 16) and out.min() >= 0 and out.max() <= 1
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(model.sample(3, generator=g1), model.sample(3, generator=g2))


def test_mmd_encoder_is_deterministic():
    model = make_vae(divergence="mmd", likelihood="gaussian").train()
    x = torch.rand(4, 1, 16, 16)
    assert torch.equal(model.encode(x), model.encode(x))


def test_bad_choices_rejected():
    with pytest.raises(ValueError, match="divergence"):
        make_vae(divergence="wasserstein")
    with pytest.raises(ValueError, match="likelihood"):
        make_vae(likelihood="laplace")


@pytest.mark.parametrize("divergence,likelihood,beta", [("kl", "bernoulli", 1.0), ("mmd", "gaussian", 256.0)])
def test_loss_falls_on_digits(tmp_path, divergence, likelihood, beta):
    pl.seed_everything(0)
    dm = ImageDataModule("digits", DigitsSource, None, 16, 1, batch_size=64, cache_dir=str(tmp_path))
    model = make_vae(divergence=divergence, likelihood=likelihood, beta=beta, lr=2e-3)
    dm.prepare_data()
    x = dm.images("test", torch.arange(256))
    with torch.no_grad():
        before = model._losses(x)["loss"].item()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm)
    with torch.no_grad():
        after = model._losses(x)["loss"].item()
    assert after < 0.85 * before
