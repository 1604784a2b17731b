"""Every model config honours the contract; parametrised over conf/model/*.yaml so a new model needs no edits."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import pytorch_lightning as pl
import torch

from genbench.callbacks.evaluation import run_evaluators
from genbench.evaluators.neighbours import NearestNeighbours
from genbench.evaluators.pictures import SampleGrid
from genbench.evaluators.samplers import UnknownSampler, fitted_source
from genbench.interface import EncoderUnavailable, GenerativeModel
from helpers import CONF, compose_config

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def test_every_named_model_has_a_config():
    for name in ("glo", "incremental_glo", "vae", "mmd_vae", "alae"):
        if name not in MODELS:
            pytest.fail(f"conf/model/{name}.yaml is missing")


def trained_a_few_steps(name: str, tmp_path: Path, monkeypatch) -> tuple[GenerativeModel, object]:
    """(model in eval mode, datamodule) after 3 training steps on digits."""
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path / "cache"))
    cfg = compose_config([f"model={name}", "data=digits", "data.batch_size=32"], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    assert isinstance(model, GenerativeModel)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    return model.eval(), datamodule


@pytest.mark.parametrize("name", MODELS)
def test_model_contract_after_a_few_steps(name, tmp_path: Path, monkeypatch):
    model, datamodule = trained_a_few_steps(name, tmp_path, monkeypatch)
    x = datamodule.images("test", torch.arange(5))
    shape = (5, 1, 16, 16)

    def check_images(images: torch.Tensor) -> None:
        assert images.shape == shape
        assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1

    with torch.no_grad():
        z = torch.randn(5, model.latent_dim)
        check_images(model.decode(z))
        check_images(model.sample(5))
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        assert torch.equal(model.sample(5, generator=g1), model.sample(5, generator=g2))
        check_images(model.reconstruct(x))
        check_images(model.reconstruct(datamodule.images("train", torch.arange(5)), torch.arange(5)))
        try:
            codes = model.encode(x)
        except EncoderUnavailable:
            codes = None
        if codes is not None:
            assert codes.shape == (5, model.latent_dim)
    assert isinstance(model.sampler_name, str) and model.sampler_name


SAMPLERS = sorted(p.stem for p in (CONF / "model" / "sampler").glob("*.yaml"))


@pytest.mark.parametrize("name", MODELS)
def test_every_sampler_fits_every_model(name, tmp_path: Path, monkeypatch):
    """Each conf/model/sampler/*.yaml, fitted to the model's training codes after training, draws codes of the
    model's latent size that decode to images; one evaluation scores them all, keyed @<sampler>."""
    model, datamodule = trained_a_few_steps(name, tmp_path, monkeypatch)
    n_train = len(datamodule.split("train"))
    with torch.no_grad():
        codes = model.training_codes(datamodule)
    assert codes.shape == (n_train, model.latent_dim) and torch.isfinite(codes).all()
    for sampler in SAMPLERS:
        source = fitted_source(sampler, model, datamodule, seed=0)
        assert source.name == sampler and not source.own
        with torch.no_grad():
            g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
            z = source.sample_codes(6, g1)
            assert z.shape == (6, model.latent_dim) and torch.isfinite(z).all()
            if getattr(model, "code_projection", "none") == "sphere":
                torch.testing.assert_close(z.norm(dim=1), torch.ones(6))
            images = source.sample(6, g2)
        assert images.shape == (6, 1, 16, 16) and images.min() >= 0 and images.max() <= 1
        torch.testing.assert_close(images, model.decode(z))  # the same draws: samples are decoded codes

    evaluators = {"samples": SampleGrid(rows=2), "neighbours": NearestNeighbours(rows=2, k=2, n_samples=20)}
    results, _ = run_evaluators(
        evaluators, model, datamodule, tmp_path, torch.device("cpu"), seed=0, final=True,
        samplers=["prior", "gaussian", "gmm"],
    )  # fmt: skip
    own = model.sampler_name
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "neighbours.png").is_file()
    for extra in {"gaussian", "gmm"} - {own}:
        assert (tmp_path / f"samples_{extra}.png").is_file()
        assert (
            tmp_path / f"neighbours_{extra}.png"
        ).is_file()  # each sampler's own picture, none overwritten
        assert f"samples@{extra}" in results["eval_seconds"]
        assert f"fit_sampler@{extra}" in results["eval_seconds"]
    assert not (tmp_path / "samples_prior.png").exists() and not (tmp_path / f"samples_{own}.png").exists()


def test_an_unknown_sampler_is_refused_with_the_choices(tmp_path: Path, monkeypatch):
    model, datamodule = trained_a_few_steps("vae", tmp_path, monkeypatch)
    with pytest.raises(UnknownSampler, match="no sampler 'gmn'.*choose from diagonal, gaussian, gmm"):
        fitted_source("gmn", model, datamodule, seed=0)


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name, tmp_path: Path):
    """Experiment configs only override keys that exist (Hydra's struct mode rejects typos)."""
    cfg = compose_config([f"experiment={name}"], tmp_path)
    assert cfg.model._target_.startswith("genbench.models.")
    assert cfg.trainer.max_epochs > 0


def test_posts_two_dimensional_settings(tmp_path: Path):
    cfg = compose_config(["experiment=mmd_vae_fashion_mnist_2d"], tmp_path)
    assert (cfg.model.latent_dim, cfg.model.lr, cfg.trainer.max_epochs) == (2, 1.0e-4, 50)
    assert (cfg.model.divergence, cfg.model.likelihood, cfg.data.name) == ("mmd", "gaussian", "fashion_mnist")
