"""Generative metrics: the dataset classifier, FID/KID/PR on its and Inception's features, the reference cache, the
Inception skip path, and `python -m genbench.evaluate` on a finished run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from genbench import classifier as classifier_module
from genbench.callbacks.evaluation import run_evaluators
from genbench.classifier import classifier_path, load_classifier, load_or_train
from genbench.data import ImageDataModule
from genbench.data.sources import DigitsSource
from genbench.evaluate import main as evaluate_main
from genbench.evaluators import features as features_module
from genbench.evaluators.base import EvalContext
from genbench.evaluators.distributed import shard, shard_sizes
from genbench.evaluators.features import (
    ClassifierFeatures,
    FeaturesUnavailable,
    InceptionFeatures,
    say_once_per_sweep,
)
from genbench.evaluators.generative import GenerativeMetrics
from genbench.interface import GenerativeModel
from genbench.metrics import FeatureExtractor, write_random_inception_weights
from genbench.metrics.features import INCEPTION_RESIZER, INCEPTION_WEIGHTS_FILE
from genbench.run.record import merge_metrics
from helpers import compose_config

REPO = Path(__file__).resolve().parents[1]
SIZE = 16


class Source(GenerativeModel):
    """Samples drawn (with the given generator) from a fixed pool of images (N, 1, 16, 16), or uniform noise."""

    def __init__(self, pool: Tensor | None) -> None:
        super().__init__()
        self.pool, self.latent_dim = pool, 2

    def encode(self, x: Tensor) -> Tensor:
        return x.flatten(1)[:, :2]

    def decode(self, z: Tensor) -> Tensor:
        return z.mean(dim=1).view(-1, 1, 1, 1).expand(-1, 1, SIZE, SIZE)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if self.pool is None:
            return torch.rand(n, 1, SIZE, SIZE, generator=generator)
        return self.pool[torch.randint(len(self.pool), (n,), generator=generator)]

    def reconstruct(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        return x


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    """One GENBENCH_CACHE for the module; the ``trained`` fixture puts a short-trained digits classifier in it."""
    return tmp_path_factory.mktemp("genbench-cache")


@pytest.fixture(scope="module")
def digits(cache_root) -> ImageDataModule:
    return ImageDataModule(
        name="digits",
        source=partial(DigitsSource),
        root=None,
        image_size=SIZE,
        channels=1,
        cache_dir=str(cache_root),
    )


@pytest.fixture(scope="module")
def trained(digits, cache_root):
    return load_or_train(digits, "cpu", cache_root / "classifiers", epochs=1, min_steps=60, batch_size=64)


@pytest.fixture
def genbench_cache(cache_root, trained, monkeypatch) -> Path:
    monkeypatch.setenv("GENBENCH_CACHE", str(cache_root))
    return cache_root


def evaluate(evaluator, model, datamodule, run_dir: Path, final: bool = True) -> tuple[dict, EvalContext]:
    return run_evaluators(
        {"generative": evaluator}, model, datamodule, run_dir, torch.device("cpu"), 0, final
    )


def test_classifier_learns_digits_and_is_cached(trained, digits, cache_root, monkeypatch):
    assert trained.test_accuracy >= 0.9
    path = classifier_path("digits", SIZE, cache_root / "classifiers")
    summary = json.loads(path.with_suffix(".json").read_text())
    assert summary["test_accuracy"] == trained.test_accuracy and summary["image_size"] == SIZE

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier must be reused")

    monkeypatch.setattr(classifier_module, "train_classifier", no_training)
    again = load_or_train(digits, "cpu", cache_root / "classifiers")
    assert again.digest == trained.digest and again.test_accuracy == trained.test_accuracy
    features = again.features(digits.images("test", torch.arange(5)))
    assert features.shape == (5, 128)

    good = path.read_bytes()
    path.write_bytes(b"corrupt")
    assert load_classifier(path) is None  # an unreadable file means "train again", never an error
    path.write_bytes(good)


@pytest.mark.slow  # minutes on a CPU: 5 epochs of 60,000 images
@pytest.mark.parametrize(
    ("name", "folder", "at_least"), [("mnist", "MNIST", 0.99), ("fashion_mnist", "FashionMNIST", 0.90)]
)
def test_classifier_accuracy_on_the_real_datasets(name, folder, at_least, shared_data, tmp_path):
    from genbench.data.sources import IDXSource

    dm = ImageDataModule(
        name=name,
        source=partial(IDXSource, folder=folder),
        root=str(shared_data),
        image_size=28,
        channels=1,
        cache_dir=str(tmp_path),
    )
    assert (
        load_or_train(dm, "cuda" if torch.cuda.is_available() else "cpu", tmp_path).test_accuracy >= at_least
    )


def test_fid_classifier_of_real_images_far_below_noise(genbench_cache, digits, tmp_path):
    metrics = GenerativeMetrics(
        ClassifierFeatures(), n_gen=300, n_ref=300, kid_subset_size=200, kid_subsets=20
    )
    real_model = Source(digits.images("train"))
    real, ctx = evaluate(metrics, real_model, digits, tmp_path)
    noise, _ = evaluate(metrics, Source(None), digits, tmp_path)
    assert real["fid_classifier@prior"] * 20 < noise["fid_classifier@prior"]
    assert real["kid_classifier@prior"] * 20 < noise["kid_classifier@prior"]
    assert real["precision_classifier@prior"] > 0.6 and real["recall_classifier@prior"] > 0.6
    assert noise["precision_classifier@prior"] < 0.1
    assert real["classifier_test_accuracy"] >= 0.9
    protocol = real["protocols"]["fid_classifier@prior"]
    assert protocol["n_gen"] == 300 and protocol["n_ref"] == 300 and protocol["reference_split"] == "test"
    assert "classifier digits 16px" in protocol["feature_extractor"] and protocol["resizer"].startswith(
        "none"
    )
    assert real["protocols"]["precision_classifier@prior"]["k"] == 3
    assert real["protocols"]["kid_classifier@prior"]["kid_subset_size"] == 200
    # the same seed gives the same samples: a rerun reproduces the value exactly
    assert (
        evaluate(metrics, real_model, digits, tmp_path)[0]["fid_classifier@prior"]
        == real["fid_classifier@prior"]
    )


def test_periodic_evaluation_uses_the_smaller_n(genbench_cache, digits, tmp_path):
    metrics = GenerativeMetrics(
        ClassifierFeatures(), n_gen=300, n_ref=300, periodic_n_gen=60, periodic_n_ref=50, kid_subset_size=40
    )
    results, _ = evaluate(metrics, Source(digits.images("train")), digits, tmp_path, final=False)
    protocol = results["protocols"]["kid_classifier@prior"]
    assert (protocol["n_gen"], protocol["n_ref"], protocol["kid_subset_size"]) == (60, 50, 40)


class CountingPixels:
    """A feature source (flattened pixels) that counts the images it embeds."""

    name = "pixels"

    def __init__(self, digest: str | None = "identity") -> None:
        self.embedded, self.digest = 0, digest

    def load(self, ctx: EvalContext) -> FeatureExtractor:
        def extract(x: Tensor) -> Tensor:
            self.embedded += x.shape[0]
            return x.flatten(1)

        return FeatureExtractor(self.name, extract, "pixels", digest=self.digest)


def test_reference_features_are_computed_once_and_reused(digits, tmp_path):
    features = CountingPixels()
    metrics = GenerativeMetrics(
        features, n_gen=40, n_ref=30, kid_subset_size=20, cache_dir=str(tmp_path / "feats"),
        reconstructions=False,
    )  # fmt: skip
    model = Source(digits.images("train"))
    first, _ = evaluate(metrics, model, digits, tmp_path)
    assert features.embedded == 40 + 30 and len(list((tmp_path / "feats").glob("features-*.pt"))) == 1
    second, _ = evaluate(metrics, model, digits, tmp_path)
    assert features.embedded == 70 + 40  # only the samples again
    assert second["fid_pixels@prior"] == first["fid_pixels@prior"]
    GenerativeMetrics(
        features,
        n_gen=40,
        n_ref=31,
        kid_subset_size=20,
        cache_dir=str(tmp_path / "feats"),
        reconstructions=False,
    )(EvalContext(model, digits, tmp_path, torch.device("cpu")))
    assert len(list((tmp_path / "feats").glob("features-*.pt"))) == 2  # another N, another entry


def test_collapsed_samples_are_flagged_against_the_reconstructions(digits, tmp_path):
    """The reconstructions of training images (here perfect) are scored as ``@reconstruction``: the decoder's
    ceiling. Samples that are all one image have a recall far below it: flagged in ``flags`` and by the ratio."""
    metrics = GenerativeMetrics(CountingPixels(), n_gen=200, n_ref=200, kid_subset_size=50)
    train = digits.images("train")
    collapsed, _ = evaluate(metrics, Source(train[:1].repeat(5, 1, 1, 1)), digits, tmp_path)
    assert collapsed["recall_pixels@reconstruction"] > 0.5
    # the same protocol as the samples' (the sampler column says what was scored): one leaderboard table
    assert collapsed["protocols"]["fid_pixels@reconstruction"] == collapsed["protocols"]["fid_pixels@prior"]
    assert (
        collapsed["protocols"]["recall_ratio_pixels@prior"] == collapsed["protocols"]["recall_pixels@prior"]
    )
    assert collapsed["recall_pixels@prior"] < 0.05
    assert collapsed["recall_ratio_pixels@prior"] < 0.1
    assert "sample_collapse_pixels@prior" in collapsed["flags"]
    assert "reconstruction_recall_pixels" not in collapsed["flags"]
    healthy, _ = evaluate(metrics, Source(train), digits, tmp_path)
    assert healthy["recall_ratio_pixels@prior"] > 0.7 and not healthy.get("flags")
    noise_decoder = Source(None)
    noise_decoder.reconstruct = lambda x, index=None: torch.rand_like(x)  # the decoder learned nothing
    failed, _ = evaluate(metrics, noise_decoder, digits, tmp_path)
    assert "reconstruction_recall_pixels" in failed["flags"]
    periodic, _ = evaluate(metrics, Source(train), digits, tmp_path, final=False)
    assert "fid_pixels@reconstruction" not in periodic  # the final evaluation only


def test_an_extractor_without_a_digest_is_never_cached(digits, tmp_path):
    features = CountingPixels(digest=None)
    metrics = GenerativeMetrics(
        features, n_gen=20, n_ref=20, kid_subset_size=10, cache_dir=str(tmp_path / "f")
    )
    evaluate(metrics, Source(digits.images("train")), digits, tmp_path)
    evaluate(metrics, Source(digits.images("train")), digits, tmp_path)
    assert features.embedded == 2 * (20 + 20 + 20) and not list(tmp_path.glob("f/features-*.pt"))


def test_classifier_metrics_skipped_for_unlabelled_data(tmp_path):
    unlabelled = SimpleNamespace(  # the evaluator needs the split's length before it asks for labels
        name="faces",
        image_size=SIZE,
        source=SimpleNamespace(has_labels=False),
        split=lambda name: torch.zeros(50, 1, SIZE, SIZE, dtype=torch.uint8),
    )
    results, _ = evaluate(
        GenerativeMetrics(ClassifierFeatures(), n_gen=20, n_ref=20), Source(None), unlabelled, tmp_path
    )
    assert "no labels" in results["skipped"]["fid_classifier"] and not any("@" in k for k in results)
    ctx = EvalContext(Source(None), unlabelled, tmp_path, torch.device("cpu"))
    with pytest.raises(FeaturesUnavailable, match="no labels"):
        ClassifierFeatures().load(ctx)


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def nothing_said(monkeypatch) -> None:
    """A process that has said nothing yet (say_once_per_sweep's memory), outside any sweep."""
    monkeypatch.setattr(features_module, "_said", set())
    monkeypatch.setattr(features_module, "sweep_dir", lambda: None)


@pytest.mark.usefixtures("nothing_said")
def test_inception_without_weights_warns_once_in_one_line_and_records_the_skip(
    empty_torch_home, digits, tmp_path, caplog
):
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # two jobs of an in-process sweep: a new evaluator each, one process
            metrics = GenerativeMetrics(
                InceptionFeatures(weights_path=None, download=False), n_gen=20, n_ref=20
            )
            final, _ = evaluate(metrics, Source(None), digits, tmp_path)
            periodic, _ = evaluate(metrics, Source(None), digits, tmp_path, final=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [features_module.INCEPTION_SKIPPED]
    (said,) = warnings
    assert (
        "\n" not in said
        and len(said) < 260
        and f"eval.inception.weights_path=/path/to/{INCEPTION_WEIGHTS_FILE}" in said
    )
    for results in (final, periodic):  # the full reason stays in metrics.json
        reason = results["skipped"]["fid_inception"]
        assert INCEPTION_WEIGHTS_FILE in reason and str(empty_torch_home) in reason
        assert "eval.inception.weights_path" in reason and not any("@" in k for k in results)


def test_a_skip_is_said_once_per_sweep_across_processes(monkeypatch, tmp_path, caplog):
    """Jobs of a sweep that run as processes of their own (joblib, SLURM) share the sweep folder's marker."""
    monkeypatch.setattr(features_module, "sweep_dir", lambda: tmp_path / "sweep")
    said = []
    with caplog.at_level(logging.WARNING):
        for _job in range(3):
            monkeypatch.setattr(features_module, "_said", set())  # a fresh process for each job
            said.append(say_once_per_sweep("inception-weights", "the skip"))
    assert said == [True, False, False] and (tmp_path / "sweep" / ".said-inception-weights").is_file()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == ["the skip"]
    monkeypatch.setattr(features_module, "sweep_dir", lambda: tmp_path / "another sweep")
    monkeypatch.setattr(features_module, "_said", set())
    assert say_once_per_sweep("inception-weights", "the skip")  # another sweep is told again


def test_sweep_dir_is_none_outside_a_hydra_multirun():
    assert features_module.sweep_dir() is None


def test_inception_features_from_the_real_torch_fidelity_network(empty_torch_home, digits, tmp_path):
    weights = write_random_inception_weights(tmp_path / "random-inception.pth")  # real layout, random values
    ctx = EvalContext(Source(None), digits, tmp_path, torch.device("cpu"))
    loaded = InceptionFeatures(weights_path=str(weights)).load(ctx)
    features = loaded.extract(digits.images("test", torch.arange(3)))  # 16x16 grey -> 299x299 RGB inside
    assert features.shape == (3, 2048) and torch.isfinite(features).all()
    assert (
        loaded.resizer == INCEPTION_RESIZER and "inception" in loaded.description and len(loaded.digest) == 16
    )


@pytest.mark.slow  # FID's eigenvalues at D=2048 alone take 10-70 s on two busy cores
def test_inception_metrics_with_the_real_torch_fidelity_network(empty_torch_home, digits, tmp_path):
    weights = write_random_inception_weights(tmp_path / "random-inception.pth")
    metrics = GenerativeMetrics(
        InceptionFeatures(weights_path=str(weights)),
        n_gen=5,
        n_ref=5,
        batch_size=5,
        kid_subset_size=5,
        kid_subsets=5,
        cache_dir=str(tmp_path / "feats"),
    )
    results, _ = evaluate(metrics, Source(digits.images("train")), digits, tmp_path)
    for name in ("fid", "kid", "precision", "recall"):
        assert torch.isfinite(torch.tensor(results[f"{name}_inception@prior"])), name
    protocol = results["protocols"]["fid_inception@prior"]
    assert protocol["resizer"] == INCEPTION_RESIZER and "inception" in protocol["feature_extractor"]
    assert "skipped" not in results


def test_shards_cover_every_row_once():
    for n, world in ((10, 3), (2, 2), (10000, 8)):
        ranges = [shard(n, SimpleNamespace(rank=r, world_size=world)) for r in range(world)]
        assert [len(r) for r in ranges] == shard_sizes(n, world)
        assert [i for r in ranges for i in r] == list(range(n))


def test_merge_keeps_old_keys_overwrites_new_ones_and_clears_resolved_skips():
    existing = {
        "train_seconds": 3.0,
        "fid_classifier@prior": 9.0,
        "protocols": {"fid_classifier@prior": {"n_gen": 1}},
        "skipped": {"fid_inception": "no weights", "memorisation_ratio": "no test split"},
    }
    results = {
        "fid_classifier@prior": 2.0,
        "fid_inception@prior": 5.0,
        "protocols": {"fid_inception@prior": {"n_gen": 2}},
        "skipped": {"fid_classifier": "offline"},
    }
    merged = merge_metrics(existing, results)
    assert merged["train_seconds"] == 3.0 and merged["fid_classifier@prior"] == 2.0
    assert merged["protocols"] == {"fid_classifier@prior": {"n_gen": 1}, "fid_inception@prior": {"n_gen": 2}}
    # fid_inception now has a value; fid_classifier keeps its older value, so its new skip is not recorded
    assert merged["skipped"] == {"memorisation_ratio": "no test split"}


def tiny_run(run_dir: Path, *extra: str) -> Path:
    from genbench.train import train

    overrides = [
        "model=vae",
        "data=digits",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "logger=none",
        "eval=none",
        *extra,
    ]
    train(compose_config(overrides, run_dir))
    return run_dir


def test_evaluate_cli_reevaluates_a_finished_run(genbench_cache, tmp_path):
    run_dir = tiny_run(tmp_path / "run")
    metrics_path = run_dir / "metrics.json"
    before = json.loads(metrics_path.read_text())
    assert "fid_classifier@prior" not in before
    before["fid_classifier@prior"] = 999.0  # a stale value, to be overwritten
    before["skipped"] = {"fid_classifier": "stale"}
    metrics_path.write_text(json.dumps(before))

    evaluate_main([f"run_dir={run_dir}", "eval=fast", "eval.inception.download=false", "device=cpu"])
    after = json.loads(metrics_path.read_text())
    assert after["train_seconds"] == before["train_seconds"] and after["status"] == "finished"
    assert after["fid_classifier@prior"] != 999.0 and after["fid_classifier@prior"] > 0
    assert after["protocols"]["fid_classifier@prior"]["n_gen"] == 500
    assert "fid_classifier" not in after["skipped"] and "fid_inception" in after["skipped"]
    assert after["recon_mse_test"] > 0 and (run_dir / "samples.png").is_file()
    assert after["reevaluations"][-1]["eval"] == "fast"


@pytest.mark.slow
def test_ddp_shards_the_generative_metrics(genbench_cache, tmp_path):
    """Two CPU ranks (gloo): N samples in all (not per rank), reference features cached by the sharded pass and
    then reused by a one-process evaluation of the same run."""
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "GENBENCH_CACHE": str(genbench_cache), "PYTHONUNBUFFERED": "1"}
    overrides = [
        "model=vae",
        "data=digits",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "logger=none",
        "eval=fast",
        "eval.inception.download=false",
        "eval.evaluators.fid_classifier.cache_dir=" + str(tmp_path / "f"),
        f"hydra.run.dir={run_dir}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "genbench", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["protocols"]["fid_classifier@prior"]["n_gen"] == 500
    assert len(list((tmp_path / "f").glob("features-*.pt"))) == 1
    evaluate_main([f"run_dir={run_dir}", "device=cpu"])  # one process: the sharded reference file is reused
    assert len(list((tmp_path / "f").glob("features-*.pt"))) == 1


def test_reevaluation_at_another_protocol_keeps_both_results():
    """eval=fast after the default evaluation: the 10k-sample FID stays the run's value; the 500-sample one is kept
    under its own protocol, never in its place (it used to replace it: 5.80 became 6.59)."""
    full, fast = {"n_gen": 10000, "n_ref": 10000}, {"n_gen": 500, "n_ref": 500}
    existing = {
        "status": "finished",
        "fid_classifier@prior": 5.80,
        "protocols": {"fid_classifier@prior": full},
    }
    results = {
        "fid_classifier@prior": 6.59,
        "fid_inception@prior": 30.0,
        "protocols": {"fid_classifier@prior": fast, "fid_inception@prior": fast},
    }
    merged = merge_metrics(existing, results)
    assert merged["fid_classifier@prior"] == 5.80 and merged["protocols"]["fid_classifier@prior"] == full
    assert merged["fid_inception@prior"] == 30.0  # new metric: added with its protocol
    (other,) = merged["other_protocols"].values()
    assert other == {"protocol": fast, "values": {"fid_classifier@prior": 6.59}}
    # the same protocol again replaces the value (a recomputation, e.g. with a fixed extractor)
    again = merge_metrics(merged, {"fid_classifier@prior": 5.9, "protocols": {"fid_classifier@prior": full}})
    assert again["fid_classifier@prior"] == 5.9 and again["other_protocols"] == merged["other_protocols"]


class Dimmed(Source):
    """Reconstructs every image at 90% brightness: per-image MSE, PSNR and SSIM have a direct computation."""

    def reconstruct(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        return x * 0.9


def test_reconstruction_psnr_and_ssim_match_a_direct_computation(digits, tmp_path):
    from torchmetrics.functional.image import structural_similarity_index_measure

    from genbench.evaluators.reconstruction import ReconstructionMSE

    results, _ = evaluate(ReconstructionMSE(n_images=100, batch_size=32), Dimmed(None), digits, tmp_path)
    x = digits.images("test", torch.arange(100))
    per_image = (0.9 * x - x).pow(2).flatten(1).mean(1)
    assert results["recon_mse_test"] == pytest.approx(float(per_image.mean()), rel=1e-5)
    assert results["recon_psnr_test"] == pytest.approx(
        float((10 * torch.log10(1 / per_image)).mean()), rel=1e-4
    )
    ssim = structural_similarity_index_measure(0.9 * x, x, data_range=1.0)
    assert (
        results["recon_ssim_test"] == pytest.approx(float(ssim), rel=1e-4) and results["recon_ssim_test"] < 1
    )
    assert "recon_psnr_train" in results and "recon_ssim_train" not in results


def test_the_real_radii_are_computed_once_per_evaluation(digits, tmp_path, monkeypatch):
    """Samples and reconstructions are scored against one real set: its k-NN radii are computed once (the
    evaluation's shared values), the samples' and the reconstructions' once each, and a new evaluation starts
    afresh."""
    import genbench.evaluators.generative as generative

    sizes = []
    real_radii = generative.manifold_radii

    def counting(feats, k=3):
        sizes.append(len(feats))
        return real_radii(feats, k)

    monkeypatch.setattr(generative, "manifold_radii", counting)
    metrics = GenerativeMetrics(CountingPixels(), n_gen=60, n_ref=50, kid_subset_size=20)
    results, _ = evaluate(metrics, Source(digits.images("train")), digits, tmp_path)
    assert "recall_pixels@reconstruction" in results and "recall_pixels@prior" in results
    assert sizes == [50]  # the real set's, once; each generated set's radii are precision_recall's own
    evaluate(metrics, Source(digits.images("train")), digits, tmp_path)
    assert sizes == [50, 50]
