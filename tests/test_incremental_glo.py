"""Incremental GLO: the curriculum split, frozen earlier codes, the continuity noise, the perceptual loss, the encoder
stage, missing pretrained weights and resuming mid-stage. Tiny nets on digits 16x16, a few steps each."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from genbench import curriculum
from genbench.data import ImageDataModule
from genbench.data.sources import DigitsSource
from genbench.latent import GaussianSampler
from genbench.models.incremental_glo import IncrementalGLO, StageLosses, stage_at
from genbench.models.incremental_glo.settings import settings
from genbench.nets.dcgan import DCGANEncoder, DCGANGenerator
from genbench.nets.pretrained import PixelFeatures, WeightsNotFound, freeze
from genbench.perceptual import PerceptualLoss, PixelLoss, perceptual_distance
from helpers import compose_config


def digits(cache_dir: Path, seed: int = 0) -> ImageDataModule:
    return ImageDataModule(
        name="digits", source=DigitsSource, root=None, image_size=16, channels=1, batch_size=64,
        cache_dir=str(cache_dir), seed=seed,
    )  # fmt: skip


GROUPS = {
    "curriculum": {"n_stages", "n_clusters", "k_representatives", "pca_dim", "feature_batch_size", "file"},
    "stages": {"subset_epochs", "final_epochs", "encoder_epochs"},
    "stage_losses": {
        "previous_batch_size", "current_batch_size", "previous_weight", "current_weight", "clean_weight",
        "continuity_weight", "continuity_sigma",
    },
    "encoder_fit": {"lr", "l1_weight", "l2_weight"},
}  # fmt: skip
FLAT_NAMES = {"curriculum_file": "file", "lr_encoder": "lr", "encoder_l1_weight": "l1_weight",
              "encoder_l2_weight": "l2_weight"}  # fmt: skip


def small_model(**overrides) -> IncrementalGLO:
    """A tiny model; settings of the grouped sub-configs may be given flat (n_stages=1, lr_encoder=3e-3)."""
    settings = dict(
        generator=partial(DCGANGenerator, channels=1, image_size=16, width=8),
        encoder=partial(DCGANEncoder, channels=1, image_size=16, width=8),
        sampler=partial(GaussianSampler),
        features=PixelFeatures(),
        image_loss=PixelLoss(l2_weight=1.0, lap1_weight=0.0),
        latent_dim=8,
        n_stages=3,
        n_clusters=8,
        k_representatives=4,
        pca_dim=16,
        subset_epochs=1,
        final_epochs=1,
        encoder_epochs=1,
        previous_batch_size=16,
        current_batch_size=16,
        lr_codes=1e-2,
    )
    grouped: dict[str, dict] = {group: {} for group in GROUPS}
    flat = {}
    for key, value in {**settings, **overrides}.items():
        name = FLAT_NAMES.get(key, key)
        group = next((g for g, names in GROUPS.items() if name in names and key != "lr"), None)
        (grouped[group] if group else flat)[name if group else key] = value
    return IncrementalGLO(**flat, **grouped)


def cpu_trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        use_distributed_sampler=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        limit_train_batches=3,
    )  # fmt: skip
    return pl.Trainer(**{**defaults, **kwargs})


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("digits_cache")


# -- the curriculum ---------------------------------------------------------------------------------------------


def test_split_is_a_seeded_partition_with_the_configured_sizes(cache):
    images = digits(cache).split("train").images
    features = curriculum.extract_features(PixelFeatures(), images, 512, torch.device("cpu"))
    subsets = curriculum.split(features, n_stages=3, n_clusters=10, k=5, pca_dim=20, seed=0)
    n = len(images)
    assert [len(s) for s in subsets] == [50, 50, n - 100]
    assert np.array_equal(np.sort(np.concatenate(subsets)), np.arange(n))  # disjoint, and the whole set
    again = curriculum.split(features, n_stages=3, n_clusters=10, k=5, pca_dim=20, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(subsets, again, strict=True))
    labels = curriculum.stage_of(subsets, n)
    assert np.bincount(labels).tolist() == [50, 50, n - 100]
    with pytest.raises(ValueError, match="need more than"):
        curriculum.split(features, n_stages=3, n_clusters=100, k=10, pca_dim=20, seed=0)


def test_representatives_are_the_members_nearest_their_centroids():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0], [20, 0, 0], [0, 20, 0], [0, 0, 20], [20, 20, 20]], dtype=float)
    sizes = [30, 25, 40, 35, 2]  # the last cluster has fewer than k members: the round is topped up
    features = np.concatenate([c + rng.normal(size=(m, 3)) for c, m in zip(centres, sizes, strict=True)])
    labels, centroids = curriculum.cluster(features, 5, seed=0)
    chosen = curriculum.representatives(features, 5, 4, seed=0)
    assert len(chosen) == 20 and len(set(chosen.tolist())) == 20
    for c, centroid in enumerate(centroids):
        members = np.flatnonzero(labels == c)
        distance = np.linalg.norm(features[members] - centroid, axis=1)  # brute force, per cluster
        picked = np.isin(members, chosen)
        if len(members) >= 4:
            assert picked.sum() >= 4 and distance[picked].min() <= distance[~picked].min()
            nearest = set(members[np.argsort(distance)[:4]].tolist())
            assert nearest <= set(chosen.tolist())
        else:
            assert picked.all()


# -- training stages ----------------------------------------------------------------------------------------------


class Tables(pl.Callback):
    """Code table and generator weights at every epoch start and at the end."""

    def __init__(self):
        self.codes, self.generator, self.stages = [], [], []

    def _take(self, module):
        self.codes.append(module.codes.weight.clone())
        self.generator.append(
            torch.cat([p.detach().flatten().clone() for p in module.generator.parameters()])
        )

    def on_train_epoch_start(self, trainer, module):
        self._take(module)
        self.stages.append(module.current_stage.name)

    def on_train_end(self, trainer, module):
        self._take(module)


def test_stage_k_trains_its_subset_and_leaves_earlier_codes_frozen(cache):
    model = small_model(final_epochs=0, encoder_epochs=0)
    tables = Tables()
    trainer = cpu_trainer(max_epochs=3, callbacks=[tables])
    trainer.fit(model, digits(cache))
    assert tables.stages == ["subset1", "subset2", "subset3"]
    subsets = model._subsets
    assert [len(s) for s in subsets[:2]] == [32, 32] and sum(len(s) for s in subsets) == len(model.codes)
    for k in range(3):
        before, after = tables.codes[k], tables.codes[k + 1]
        moved = (after != before).any(dim=1)
        assert moved[subsets[k]].sum() > 16, k  # 3 steps x 16 draws from 32 codes
        others = torch.cat([s for j, s in enumerate(subsets) if j != k])
        assert not moved[others].any(), k  # earlier subsets frozen, later ones not started
        assert not torch.equal(tables.generator[k], tables.generator[k + 1])
    metrics = trainer.callback_metrics
    assert metrics["train/stage"] == 3 and metrics["train/current_size"] == len(subsets[2])
    assert metrics["train/previous_size"] == 64 and metrics["train/report_setting"] == 0
    assert {"train/loss_subset1", "train/loss_subset2", "train/loss_subset3", "train/loss_previous"} <= set(
        metrics
    )


@pytest.mark.parametrize("sigma", [0.25, 0.0])
def test_continuity_term_uses_the_configured_sigma(cache, sigma):
    """The whole-set stage feeds G [z, z + eps]: eps is read off G's input and its spread compared with sigma."""
    model = small_model(
        n_stages=1, subset_epochs=0, final_epochs=1, encoder_epochs=0, latent_dim=16, continuity_sigma=sigma
    )
    assert model.stage_losses.continuity_sigma == sigma
    inputs = []
    model.generator.register_forward_hook(lambda m, args, out: inputs.append(args[0].detach().clone()))
    cpu_trainer(max_epochs=1, limit_train_batches=2).fit(model, digits(cache))
    pairs = [z for z in inputs if z.shape[0] == 128]  # training steps: 64 clean + 64 noisy codes
    assert len(pairs) == 2
    eps = torch.cat([z[64:] - z[:64] for z in pairs])  # (128, 16), projection none
    assert eps.std().item() == pytest.approx(sigma, rel=0.1, abs=1e-7)
    assert abs(eps.mean().item()) < 0.05


def test_encoder_stage_lowers_the_regression_error_with_the_decoder_frozen(cache):
    model = small_model(n_stages=1, subset_epochs=0, final_epochs=1, encoder_epochs=4, lr_encoder=3e-3)
    tables, losses = Tables(), []

    class EncoderLoss(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if module.current_stage.kind == "encoder":
                losses.append(float(outputs["loss"]))

    datamodule = digits(cache)
    cpu_trainer(max_epochs=10, limit_train_batches=6, callbacks=[tables, EncoderLoss()]).fit(
        model, datamodule
    )
    assert len(losses) == 24 and int(model.encoder_steps) == 24
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
    assert torch.equal(tables.codes[1], tables.codes[-1]) and torch.equal(
        tables.generator[1], tables.generator[-1]
    )
    model.eval()
    x = datamodule.images("test", torch.arange(6))
    with torch.no_grad():
        assert torch.equal(model.encode(x), model.encoder(x))
        assert model.reconstruct(x).shape == x.shape
        assert model.sample(3, torch.Generator().manual_seed(0)).shape == (3, 1, 16, 16)


def test_encode_falls_back_to_inversion_before_the_encoder_is_trained(cache):
    model = small_model(n_stages=1, subset_epochs=0, final_epochs=1, inversion_steps=5)
    cpu_trainer(max_steps=2).fit(model, digits(cache))
    assert int(model.encoder_steps) == 0
    x = digits(cache).images("test", torch.arange(4))
    with torch.no_grad():
        codes = model.eval().encode(x)
    assert codes.shape == (4, 8) and not torch.allclose(codes, model.encoder(x))


def test_stage_schedule_by_epoch():
    stages = small_model(n_stages=2, subset_epochs=2, final_epochs=0, encoder_epochs=3).stages
    assert [stage_at(stages, e).name for e in range(9)] == ["subset1"] * 2 + ["subset2"] * 2 + ["encoder"] * 5


# -- resuming -----------------------------------------------------------------------------------------------------


def test_checkpoint_mid_stage_resumes_in_that_stage_with_the_saved_split(cache, tmp_path, monkeypatch):
    first = small_model(n_stages=2, subset_epochs=2, curriculum_file=str(tmp_path / "curriculum.json"))
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1, filename="{step}")
    cpu_trainer(max_steps=5, enable_checkpointing=True, callbacks=[saver]).fit(first, digits(cache))
    checkpoint = tmp_path / "step=4.ckpt"  # epoch 1 of subset1's epochs 0-1, one batch in
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["incremental_glo"]["stage"] == "subset1" and saved["epoch"] == 1
    assert (tmp_path / "curriculum.json").is_file()

    seen = {}

    class FirstBatch(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.setdefault(
                "start", (trainer.current_epoch, module.current_stage.name, module.subset_of.clone())
            )
            seen["last"] = module.current_stage.name

    def no_new_split(*args, **kwargs):
        raise AssertionError("a resumed run must take its split from the checkpoint, not compute one")

    monkeypatch.setattr(curriculum, "split", no_new_split)
    resumed = small_model(n_stages=2, subset_epochs=2)
    cpu_trainer(max_epochs=20, callbacks=[FirstBatch()]).fit(resumed, digits(cache), ckpt_path=checkpoint)
    epoch, stage, subset_of = seen["start"]
    assert (epoch, stage) == (1, "subset1")
    assert torch.equal(subset_of, first.subset_of) and torch.equal(resumed.subset_of, first.subset_of)
    assert seen["last"] == "encoder" and resumed.current_epoch == 6  # the schedule ran to its end and stopped


# -- perceptual loss, pretrained weights, nets, configs -----------------------------------------------------------


class TinyBlocks(nn.Module):
    """A VGG-like stack with VGG16Blocks' interface: (N, C, H, W) -> [features at the end of each block]."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU()),
                nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU()),
            ]
        )

    def forward(self, x):
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out


def test_perceptual_loss_is_zero_for_identical_images_and_matches_a_direct_computation():
    net = freeze(TinyBlocks())
    assert list(net.parameters()) == [] and net.state_dict() == {}  # frozen weights never reach a checkpoint
    loss = PerceptualLoss(net, pixel_weight=1.0, feature_weight=0.5)
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(loss(x, x), torch.zeros(3))
    y = torch.rand(3, 3, 16, 16, requires_grad=True)
    value = loss(y, x)
    direct = (y - x).abs().mean(dim=(1, 2, 3)) + 0.5 * sum(
        (a - b).abs().mean(dim=(1, 2, 3)) for a, b in zip(net(y), net(x), strict=True)
    )
    torch.testing.assert_close(value, direct)
    assert (value > 0).all()
    value.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    torch.testing.assert_close(perceptual_distance(y, x, net, 1.0, 0.5), value)


@pytest.mark.parametrize(
    "overrides, missing, key",
    [
        (["experiment=incremental_glo_frogs"], "resnet50-0676ba61.pth", "model.features"),
        (
            ["experiment=incremental_glo_frogs", "model/features=pixels"],
            "vgg16-397923af.pth",
            "model.image_loss.network",
        ),
    ],
)
def test_missing_weights_fail_at_start_up_naming_the_file(overrides, missing, key, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty torchvision cache
    cfg = compose_config(overrides, tmp_path)
    with pytest.raises(InstantiationException) as error:  # Hydra wraps the model's error, message included
        instantiate(cfg.model)
    assert isinstance(error.value.__cause__, WeightsNotFound)
    message = str(error.value.__cause__)
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / missing) in message
    assert f"{key}.weights_path" in message and "model/features=pixels" in message
    cfg = compose_config([*overrides, f"{key}.weights_path={tmp_path}/nowhere.pth"], tmp_path)
    with pytest.raises(
        InstantiationException, match=f"{key}.weights_path={tmp_path}/nowhere.pth: no such file"
    ):
        instantiate(cfg.model)


@pytest.mark.parametrize("size", [16, 28, 32, 64])
def test_dcgan_encoder_shapes_and_discriminator_layout(size):
    net = DCGANEncoder(channels=3, image_size=size, out_features=5, width=4)
    assert net(torch.rand(2, 3, size, size)).shape == (2, 5)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == len(convs) - 1  # no batch norm on the first layer, as in DCGAN's discriminator


def test_default_config_builds_and_records_the_fallback_setting(tmp_path):
    cfg = compose_config(["model=incremental_glo", "data=digits"], tmp_path)
    model = instantiate(cfg.model)
    assert isinstance(model, IncrementalGLO) and model.sampler_name == "gaussian"
    assert model.setting == {"features": "pixels", "image_loss": "l2+lap1", "report_setting": False}
    assert cfg.model.curriculum.file == f"{tmp_path}/curriculum.json"
    assert [s.name for s in model.stages] == ["subset1", "subset2", "whole", "encoder"]
    assert sum(s.epochs for s in model.stages) <= cfg.trainer.max_epochs  # it stops when its schedule ends
    with pytest.raises(ValueError, match="StageLosses has no setting continuity; known: clean_weight"):
        settings(StageLosses, {"continuity": 0.5})
    for name in ("glo", "no_continuity", "continuity"):
        fig4 = compose_config([f"experiment=incremental_glo_fig4_{name}"], tmp_path)
        assert (
            fig4.data.name == "frogs"
            and fig4.trainer.max_epochs == 2001
            and fig4.model.stages.encoder_epochs == 0
        )
        assert fig4.model.stage_losses.continuity_weight == (0.7 if name == "continuity" else 0.0)


# -- DDP ----------------------------------------------------------------------------------------------------------

DDP_SCRIPT = """
import sys
from functools import partial
import pytorch_lightning as pl
import torch
from genbench.data import ImageDataModule
from genbench.data.sources import DigitsSource
from genbench.latent import GaussianSampler
from genbench.models.incremental_glo import IncrementalGLO
from genbench.nets.dcgan import DCGANEncoder, DCGANGenerator
from genbench.nets.pretrained import PixelFeatures
from genbench.perceptual import PixelLoss

out = sys.argv[1]
torch.set_num_threads(1)

class Record(pl.Callback):
    def on_train_start(self, trainer, module):
        self.initial = module.codes.weight.clone()

    def on_train_end(self, trainer, module):
        torch.save({
            "initial": self.initial, "codes": module.codes.weight.clone(), "subset_of": module.subset_of.clone(),
            "nets": [t.detach().clone() for t in [*module.generator.parameters(), *module.generator.buffers(),
                                                  *module.encoder.parameters(), *module.encoder.buffers()]],
        }, f"{out}/rank{trainer.global_rank}.pt")

pl.seed_everything(0)
dm = ImageDataModule(name="digits", source=DigitsSource, root=None, image_size=16, channels=1, batch_size=64,
                     cache_dir=out + "/cache")
model = IncrementalGLO(
    partial(DCGANGenerator, channels=1, image_size=16, width=8), partial(DCGANEncoder, channels=1, image_size=16, width=8),
    partial(GaussianSampler), PixelFeatures(), PixelLoss(), latent_dim=8,
    curriculum=dict(n_clusters=8, k_representatives=4, pca_dim=16),
    stages=dict(subset_epochs=1, final_epochs=1, encoder_epochs=1))
trainer = pl.Trainer(accelerator="cpu", strategy="ddp", devices=2, max_epochs=4, limit_train_batches=3, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                     enable_checkpointing=False, callbacks=[Record()])
trainer.fit(model, dm)
"""


@pytest.mark.slow
def test_ddp_ranks_keep_one_code_table_and_one_set_of_nets(tmp_path):
    """Every stage under Lightning's DDP (2 CPU processes, gloo): tables, split and nets agree across ranks."""
    script = tmp_path / "train_ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(ranks[0]["codes"], ranks[1]["codes"])
    assert torch.equal(ranks[0]["subset_of"], ranks[1]["subset_of"])
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["nets"], ranks[1]["nets"], strict=True))
    moved = (ranks[0]["codes"] != ranks[0]["initial"]).any(dim=1)
    assert moved.sum() > 2 * 3 * 64  # both ranks' rows of the whole-set stage (3 steps x 64) were applied
