"""validate_config refuses each out-of-range value in one line naming the key, and accepts every shipped config."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf, open_dict

from genbench.data.errors import DataError
from genbench.errors import UserError
from genbench.metrics.features import InceptionWeightsUnavailable
from genbench.nets.pretrained import WeightsNotFound
from genbench.run.validation import ConfigError, validate_config
from helpers import CONF, compose_config

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))

BAD = [
    (["seed=abc"], "seed"),
    (["seed=-1"], "seed"),
    (["seed=1.5"], "seed"),
    (["seed=true"], "seed"),
    (["seed=4294967296"], "seed"),
    (["data.image_size=0"], "data.image_size"),
    (["data.image_size=4096"], "data.image_size"),
    (["model=vae", "data.image_size=12"], "data.image_size"),  # the conv nets need 4 or 7 x 2^k
    (["model=glo", "data.image_size=20"], "data.image_size"),
    (["data.batch_size=0"], "data.batch_size"),
    (["data.eval_batch_size=0"], "data.eval_batch_size"),
    (["data.batch_size=true"], "data.batch_size"),
    (["model=vae", "model.latent_dim=0"], "model.latent_dim"),
    (["model=glo", "model.latent_dim=0"], "model.latent_dim"),
    (["model=alae", "model.latent_dim=1000000"], "model.latent_dim"),
    (["model=glo", "model.n_codes=0"], "model.n_codes"),
    (["model=vae", "model.lr=-1"], "model.lr"),
    (["model=vae", "model.lr=nan"], "model.lr"),
    (["model=vae", "model.lr=0"], "model.lr"),
    (["model=glo", "model.lr_codes=inf"], "model.lr_codes"),
    (["model=glo", "model.lr_generator=abc"], "model.lr_generator"),
    (["model=alae", "model.lr_encoder=0"], "model.lr_encoder"),
    (["model=incremental_glo", "model.encoder_fit.lr=-1e-3"], "model.encoder_fit.lr"),
    (["model=glo", "model/sampler=imle", "model.sampler.lr=0"], "model.sampler.lr"),
    (["model=glo", "model.betas=[0.9,1.0]"], "model.betas"),
    (["model=glo", "model.projection=cube"], "model.projection"),
    (["model=glo", "model.init_std=0"], "model.init_std"),
    (["model=vae", "model.beta=-1"], "model.beta"),
    (["model=alae", "model.w_avg_beta=1"], "model.w_avg_beta"),
    (["model=alae", "model.generator.output=sigmoid"], "model.generator.output"),
    (["model=glo", "model.generator.output=clamp"], "model.generator.output"),
    (["model=incremental_glo", "model.stages.final_epochs=-1"], "model.stages.final_epochs"),
    (["trainer.max_epochs=-1"], "trainer.max_epochs"),
    (["trainer.max_epochs=0"], "trainer.max_epochs"),
    (["trainer.max_epochs=null"], "trainer.max_epochs"),
    (["trainer.max_steps=0"], "trainer.max_steps"),
    (["trainer.devices=0"], "trainer.devices"),
    (["trainer.num_nodes=0"], "trainer.num_nodes"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps"),
    (["trainer.precision=fp8"], "trainer.precision"),
    (["eval.every_n_epochs=-1"], "eval.every_n_epochs"),
    (["eval.samplers=[gaussian,gmn]"], "eval.samplers"),
    (["eval.samplers=gaussian"], "eval.samplers"),
    (["eval.inversion_steps=-1"], "eval.inversion_steps"),
    (["checkpoint.every_minutes=0"], "checkpoint.every_minutes"),
    (["checkpoint.every_n_steps=-1"], "checkpoint.every_n_steps"),
    (["resume=3"], "resume"),
    (["compile=maybe"], "compile"),
]


@pytest.mark.parametrize(("overrides", "key"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_value_is_refused_in_one_line_naming_the_key(overrides, key, tmp_path):
    cfg = compose_config(overrides, tmp_path / "run")
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    message = str(error.value)
    assert message.startswith(f"{key}="), message
    assert "\n" not in message
    assert "must be" in message and "set e.g." in message
    assert isinstance(error.value, UserError) and isinstance(error.value, ValueError)


def test_image_size_message_names_the_range_and_the_native_sizes(tmp_path):
    with pytest.raises(
        ConfigError, match=r"^data\.image_size=4096: .*between 8 and 1024.*digits dataset is 16px"
    ):
        validate_config(compose_config(["data.image_size=4096"], tmp_path / "run"))


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.max_epochs=-1", "trainer.max_steps=100"],  # max_steps bounds an endless epoch count
        ["trainer.devices=auto"],
        ["trainer.devices=[0,1]"],
        ["trainer.precision=bf16-mixed"],
        ["trainer.precision=16"],
        ["model=alae", "data.image_size=12"],  # fully connected nets take any size
        ["model=vae", "data.image_size=32"],
        ["resume=true"],
        ["resume=/some/run/dir"],
        ["model.lr_generator=1"],  # an int is a fine learning rate
        ["eval=none"],
    ],
    ids=lambda o: " ".join(o),
)
def test_legal_edge_values_pass(overrides, tmp_path):
    cfg = compose_config(overrides, tmp_path / "run")
    for override in overrides:  # the edge value really reached the config that was validated
        key, _, value = override.partition("=")
        if "." in key:
            assert str(OmegaConf.select(cfg, key)).replace(" ", "") == value, key
    validate_config(cfg)  # raises ConfigError if refused


def test_every_shipped_sampler_is_a_valid_eval_sampler(tmp_path):
    cfg = compose_config(["eval.samplers=[prior,gaussian,diagonal,gmm,imle,normal]"], tmp_path / "run")
    assert list(cfg.eval.samplers) == ["prior", "gaussian", "diagonal", "gmm", "imle", "normal"]
    validate_config(cfg)


@pytest.mark.parametrize("data", DATASETS)
@pytest.mark.parametrize("model", MODELS)
def test_every_shipped_model_and_dataset_validates(model, data, tmp_path):
    cfg = compose_config([f"model={model}", f"data={data}"], tmp_path / "run")
    assert cfg.model_name == model and cfg.data.name == data
    validate_config(cfg)  # raises ConfigError if refused


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_shipped_experiment_validates(experiment, tmp_path):
    cfg = compose_config([f"experiment={experiment}"], tmp_path / "run")
    assert cfg.model_name in MODELS
    validate_config(cfg)  # raises ConfigError if refused


def test_a_config_without_the_optional_nodes_validates(tmp_path):
    cfg = compose_config([], tmp_path / "run")
    with open_dict(cfg):
        for key in ("checkpoint", "resume", "divergence"):
            cfg.pop(key, None)
    assert not {"checkpoint", "resume", "divergence"} & set(cfg)
    validate_config(cfg)  # raises ConfigError if refused


@pytest.mark.parametrize(
    ("error", "base"),
    [
        (DataError, RuntimeError),
        (WeightsNotFound, FileNotFoundError),
        (InceptionWeightsUnavailable, FileNotFoundError),
    ],
)
def test_user_facing_errors_are_user_errors_and_keep_their_base(error, base):
    assert issubclass(error, UserError) and issubclass(error, base)
    assert str(error("x: do y")) == "x: do y"
