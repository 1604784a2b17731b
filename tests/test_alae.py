"""MLP-ALAE: equalised linear layers, the three updates, R1, and a short real run on the bundled digits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from genbench.data import ImageDataModule
from genbench.data.sources import DigitsSource
from genbench.models.alae import (
    ALAE,
    AVERAGED_NETS,
    OFFICIAL_EMA_DECAY,
    OPTIMIZER_STEPS_PER_BATCH,
    ema_update_,
    to_unit,
)
from genbench.nets.mlp import EqualizedLinear, FCEncoder, FCGenerator
from genbench.run.callbacks import RNGState

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


def test_generator_output_layer_starts_at_the_configured_scale():
    g = FCGenerator(channels=1, image_size=28, in_features=50, output_init_scale=0.1)
    assert g.net[-1].weight.std().item() == pytest.approx(0.1, rel=0.02)
    assert g.net[0].weight.std().item() == pytest.approx(1.0, rel=0.05)  # hidden layers keep He init


@pytest.mark.parametrize("output", ["linear", "clamp", "tanh"])
def test_generator_output_maps_the_linear_output(output):
    g = FCGenerator(channels=1, image_size=8, in_features=4, hidden=16, output=output)
    w = torch.randn(64, 4) * 20  # far outside [-1, 1] for some pixels
    raw = g.net(w).view(64, 1, 8, 8)
    expected = {"linear": raw, "clamp": raw.clamp(-1, 1), "tanh": torch.tanh(raw)}[output]
    torch.testing.assert_close(g(w), expected)
    if output == "clamp":
        x = raw.detach().requires_grad_(True)
        x.clamp(-1, 1).sum().backward()
        assert (
            (x.grad == 0) == (x.abs() > 1)
        ).all()  # a clipped pixel gets no gradient, the others all of it
    with pytest.raises(ValueError, match="output must be one of"):
        FCGenerator(channels=1, image_size=8, in_features=4, output="sigmoid")


def test_encoder_output_activation_is_a_leaky_relu_of_the_linear_output():
    linear = FCEncoder(channels=1, image_size=16, out_features=8, hidden=32, output_activation=False)
    activated = FCEncoder(channels=1, image_size=16, out_features=8, hidden=32, output_activation=True)
    activated.load_state_dict(linear.state_dict())
    x = torch.rand(16, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        out = linear(x)
        torch.testing.assert_close(activated(x), F.leaky_relu(out, 0.2))
    assert (out < 0).any()


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
    "step, trained, overrides",
    [
        ("_discriminator_step", {"encoder", "discriminator"}, []),
        ("_generator_step", {"mapping", "generator"}, []),
        (
            "_autoencoder_step",
            {"mapping", "generator", "encoder"},
            [],
        ),  # official: F learns through G's input
        ("_autoencoder_step", {"generator", "encoder"}, ["model.autoencoder_trains_mapping=false"]),
    ],
)
def test_each_update_changes_only_its_own_networks(step, trained, overrides, monkeypatch, tmp_path):
    model = tiny_model(*overrides)
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
    # a trained net's average follows it (D has none); the averages of untouched nets stay where they were
    averaged = {f"ema.{name}" for name in trained if name in AVERAGED_NETS}
    expected = {k for k in before if k.split(".")[0] in trained or ".".join(k.split(".")[:2]) in averaged}
    assert changed == expected
    assert any(k.startswith("ema.") for k in changed)


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


@pytest.mark.parametrize("activation, affine", [(False, True), (True, False)])
def test_official_discriminator_head_is_affine_in_w(activation, affine):
    head = tiny_model(f"model.discriminator.activation={str(activation).lower()}").discriminator
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()  # non-zero biases too
        w1, w2 = torch.randn(64, 8), torch.randn(64, 8)
        mixed, lerped = head(0.3 * w1 + 0.7 * w2), 0.3 * head(w1) + 0.7 * head(w2)
    assert torch.allclose(mixed, lerped, atol=1e-4) == affine


# -- the averaged generator (EMA) --------------------------------------------------------------------------------
def test_ema_update_is_the_closed_form_over_several_steps():
    decay, averaged, live = 0.9, torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    start = [p.detach().clone() for p in averaged.parameters()]
    seen = []
    for _ in range(4):
        with torch.no_grad():
            for p in live.parameters():
                p.normal_()
        seen.append([p.detach().clone() for p in live.parameters()])
        ema_update_(averaged, live, decay)
    for i, p in enumerate(averaged.parameters()):
        # avg_k = d^k avg_0 + (1 - d) sum_j d^(k - j) live_j, j = 1..k
        expected = decay**4 * start[i] + sum(
            (1 - decay) * decay ** (4 - j) * seen[j - 1][i] for j in range(1, 5)
        )
        torch.testing.assert_close(p.detach(), expected)


class _LiveWeights(pl.Callback):
    """The live nets' weights after each batch (all three updates done)."""

    def __init__(self) -> None:
        self.after: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        live = {
            k: v.detach().clone() for k, v in pl_module.named_parameters() if k.split(".")[0] in AVERAGED_NETS
        }
        self.after.append(live)


def test_training_averages_f_g_and_e_once_per_batch_from_the_initial_weights(tmp_path):
    model, history = tiny_model("model.ema_decay=0.5"), _LiveWeights()
    initial = {k: v.detach().clone() for k, v in model.named_parameters() if not k.startswith("ema.")}
    trainer(max_epochs=1, limit_train_batches=3, callbacks=[history]).fit(model, datamodule=digits(tmp_path))
    assert len(history.after) == 3
    averaged = dict(model.ema.named_parameters())
    for name in {k for k in history.after[0]}:
        live = [step[name] for step in history.after]
        expected = 0.125 * initial[name] + 0.5 * live[2] + 0.25 * live[1] + 0.125 * live[0]
        torch.testing.assert_close(averaged[name], expected)
    assert not any(k.startswith("discriminator") for k in averaged)


def test_sample_decode_encode_and_reconstruct_use_the_averaged_nets(tiny_run):
    _, model, _ = tiny_run
    model.eval()
    ema = model.ema
    z = torch.randn(4, model.latent_dim, generator=torch.Generator().manual_seed(5))
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        samples = model.sample(4, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(samples, to_unit(ema["generator"](ema["mapping"](z))))
        codes = model.sample_codes(4, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(codes, ema["mapping"](z))
        torch.testing.assert_close(model.decode(codes), samples)
        live_samples = to_unit(model.generator(model.mapping(z)))
        assert (samples - live_samples).abs().max() > 1e-3  # 200 batches in, the average lags the live nets
        torch.testing.assert_close(model.encode(x), ema["encoder"](x * 2 - 1))
        torch.testing.assert_close(model.reconstruct(x), to_unit(ema["generator"](ema["encoder"](x * 2 - 1))))


@pytest.mark.parametrize("off", ["null", "0"])
def test_ema_decay_null_or_zero_samples_from_the_live_nets(off):
    model = tiny_model(f"model.ema_decay={off}")
    assert model.ema is None and not any(k.startswith("ema.") for k in model.state_dict())
    z = torch.randn(3, model.latent_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        samples = model.sample(3, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(samples, to_unit(model.generator(model.mapping(z))))


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_ema_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(InstantiationException, match="ema_decay must be null or in"):
        tiny_model(f"model.ema_decay={decay}")


def test_resumed_run_continues_the_same_average(tmp_path):
    """1 epoch, a checkpoint, a fresh model resumed for a second epoch == 2 epochs straight, the average included."""
    batches = {"limit_train_batches": 3}
    torch.manual_seed(0)
    straight = tiny_model()
    trainer(max_epochs=2, callbacks=[RNGState()], **batches).fit(straight, datamodule=digits(tmp_path / "a"))

    torch.manual_seed(0)
    first = tiny_model()
    fit = trainer(max_epochs=1, callbacks=[RNGState()], **batches)
    fit.fit(first, datamodule=digits(tmp_path / "b"))
    fit.save_checkpoint(tmp_path / "mid.ckpt")
    stored = torch.load(tmp_path / "mid.ckpt", weights_only=True)["state_dict"]
    for key, value in first.ema.state_dict().items():
        torch.testing.assert_close(stored[f"ema.{key}"], value, rtol=0, atol=0)

    torch.manual_seed(123)  # the resumed run must not depend on the global RNG it starts with
    resumed = tiny_model()
    trainer(max_epochs=2, callbacks=[RNGState()], **batches).fit(
        resumed, datamodule=digits(tmp_path / "c"), ckpt_path=tmp_path / "mid.ckpt"
    )
    for (key, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=key)
    gap = max(
        (straight.ema[n].net[0].weight - getattr(straight, n).net[0].weight).abs().max()
        for n in AVERAGED_NETS
    )
    assert gap > 0  # the averages are not the live weights, so restoring them was tested


def test_checkpoints_without_averages_load_from_their_live_nets():
    old = tiny_model("model.ema_decay=null")
    model = tiny_model()
    model.load_state_dict(old.state_dict())  # strict: the missing ema.* keys are filled in
    for name in AVERAGED_NETS:
        for a, b in zip(model.ema[name].parameters(), getattr(old, name).parameters(), strict=True):
            torch.testing.assert_close(a, b)
    tiny_model("model.ema_decay=null").load_state_dict(
        model.state_dict()
    )  # averages it does not keep: dropped


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
    assert model.betas == (0.0, 0.99) and model.w_avg_beta == 0.995
    # measured better than the official gamma 10 and linear G (conf/model/alae.yaml)
    assert model.r1_gamma == 1.0 and model.generator.output == "clamp"
    assert [o.defaults["lr"] for o in model.configure_optimizers()] == [0.002, 0.002]
    assert model.truncation_psi is None
    assert model.autoencoder_trains_mapping  # official: F learns in the latent-autoencoder step
    assert all(isinstance(layer, EqualizedLinear) for layer in model.discriminator.net)  # official D: affine
    assert isinstance(model.encoder.net[-1], EqualizedLinear)  # measured better than the official leaky ReLU
    assert model.ema_decay == pytest.approx(OFFICIAL_EMA_DECAY, abs=1e-6) == pytest.approx(0.5 ** (128 / 1e4))


def test_mlp_alae_on_real_mnist_keeps_the_black_background_black(shared_data, tmp_path):
    """The speckle of short MLP-ALAE runs. With the official linear G and R1 gamma 10 the critic sees raw values
    and is too smooth in the pixels: the mean sample value on the 190 always-black MNIST pixels is 0.14 after 300
    batches (data: 0); G clipped to the data's range 0.045; clipped with gamma 1 (the defaults) 0.018."""
    from helpers import compose_config

    cfg = compose_config(
        ["model=alae", "data=mnist", "preset=none", f"data.root={shared_data}", f"data.cache_dir={tmp_path}"],
        tmp_path / "run",
    )
    assert (cfg.model.generator.output, cfg.model.r1_gamma) == ("clamp", 1.0)
    pl.seed_everything(0)
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    trainer = pl.Trainer(
        max_epochs=-1, max_steps=300 * OPTIMIZER_STEPS_PER_BATCH, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    train = datamodule.images("train")
    black = (train > 0.01).float().mean(dim=0) < 0.001  # black in 99.9% of the training images
    assert black.sum() > 150
    with torch.no_grad():
        samples = model.eval().sample(1000, generator=torch.Generator().manual_seed(0))
    assert samples[:, black].mean() < 0.035
    assert samples[:, ~black].mean() == pytest.approx(
        train[:, ~black].mean().item(), abs=0.05
    )  # not all black
