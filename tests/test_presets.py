"""Per-dataset published settings (conf/preset/<model>_<data>.yaml): picked by the model and data choices alone,
switched off by preset=none, never leaking into an experiment that names its own setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from helpers import CONF, compose_config

PRESETS = sorted(p.stem for p in (CONF / "preset").glob("*.yaml") if p.stem != "none")
MODELS = {p.stem for p in (CONF / "model").glob("*.yaml")}
DATASETS = {p.stem for p in (CONF / "data").glob("*.yaml")}


def split(preset: str) -> tuple[str, str]:
    """'incremental_glo_frogs' -> ('incremental_glo', 'frogs'): the longest model name that prefixes it."""
    model = max((m for m in MODELS if preset.startswith(f"{m}_")), key=len, default=None)
    assert model is not None, f"conf/preset/{preset}.yaml names no model of conf/model/"
    return model, preset[len(model) + 1 :]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_is_chosen_by_its_model_and_data_and_builds_the_model(preset, tmp_path: Path):
    model, data = split(preset)
    assert data in DATASETS, f"conf/preset/{preset}.yaml names no dataset of conf/data/"
    cfg = compose_config([f"model={model}", f"data={data}"], tmp_path)
    plain = compose_config([f"model={model}", f"data={data}", "preset=none"], tmp_path)
    assert cfg != plain  # the preset changed something
    assert cfg.trainer.max_epochs != plain.trainer.max_epochs  # every preset gives the published length
    assert instantiate(cfg.model).__class__.__name__ == instantiate(plain.model).__class__.__name__


def test_the_published_vae_on_mnist_is_lucic_et_al_and_preset_none_is_genbenchs_own(tmp_path: Path):
    published = compose_config(["model=vae", "data=mnist"], tmp_path)
    assert (published.model.latent_dim, published.data.batch_size, published.trainer.max_epochs) == (
        64,
        64,
        20,
    )
    assert list(published.model.betas) == [0.5, 0.999]
    own = compose_config(["model=vae", "data=mnist", "preset=none"], tmp_path)
    assert (own.model.latent_dim, own.data.batch_size, own.trainer.max_epochs) == (16, 128, 5)
    # the experiment and the preset are one setting, not two copies
    assert compose_config(["experiment=lucic_vae_mnist"], tmp_path).model == published.model


def test_glo_on_mnist_is_glanns_setting_with_imle_scored_beside_its_gaussian(tmp_path: Path):
    cfg = compose_config(["model=glo", "data=mnist"], tmp_path)
    assert (cfg.model.init, cfg.model.code_bias_correction, cfg.model.lr_decay) == ("gaussian", "global", 0.5)
    assert (cfg.trainer.max_epochs, list(cfg.eval.samplers)) == (200, ["imle"])
    assert cfg.model.sampler._target_.endswith("GaussianSampler")
    glann = compose_config(["experiment=glann_mnist_glo"], tmp_path)
    # IMLE is the experiment's own sampler, the Gaussian fit scored beside it: GLANN's comparison in one run
    assert glann.model.sampler._target_.endswith("IMLESampler") and list(glann.eval.samplers) == ["gaussian"]
    # CelebA has no GLO preset (the GLO paper's CelebA setting is 128 px: experiment=glo_celeba128)
    assert compose_config(["model=glo", "data=celeba"], tmp_path).model.init == "pca"


def test_the_digits_default_has_no_preset(tmp_path: Path):
    for model in MODELS:
        assert compose_config([f"model={model}"], tmp_path).trainer.max_epochs == 100


@pytest.mark.parametrize("experiment", ["results/glo_default", "results/mmd_vae", "vae_fashion_mnist_2d"])
def test_experiments_that_name_their_own_setting_keep_it(experiment, tmp_path: Path):
    data = "fashion_mnist"
    cfg = compose_config([f"experiment={experiment}", f"data={data}"], tmp_path)
    plain = compose_config([f"experiment={experiment}", f"data={data}", "preset=none"], tmp_path)
    assert cfg == plain


def test_the_offline_incremental_glo_preset_needs_no_pretrained_weights(tmp_path: Path):
    cfg = compose_config(["model=incremental_glo", "data=frogs"], tmp_path)
    assert cfg.model.latent_dim == 100 and cfg.data.batch_size == 75
    assert "resnet" not in cfg.model.features._target_.lower()
    assert "vgg" not in str(cfg.model.image_loss).lower()
    published = compose_config(["experiment=incremental_glo_frogs"], tmp_path)
    assert "vgg" in str(published.model.image_loss).lower()
    assert published.model.stages == cfg.model.stages
