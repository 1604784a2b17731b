"""Label probes of the training codes: the accuracies on codes that do and do not carry the labels, 1-NN against a
brute-force search, the held-out split, skips and protocols, and the configured evaluator on a real model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import hydra
import pytest
import torch
from torch import Tensor

from genbench.callbacks.evaluation import run_evaluators
from genbench.evaluators.base import EvalContext
from genbench.evaluators.probe import CodeProbe, holdout_split
from genbench.interface import GenerativeModel
from genbench.metrics.probe import linear_probe_accuracy, nearest_neighbour_accuracy, standardise
from helpers import compose_config

CLASSES = 10


class Codes:
    """A stand-in model whose ``training_codes`` are given (all the probe asks of a model)."""

    def __init__(self, codes: Tensor) -> None:
        self.codes = codes

    def training_codes(self, datamodule, batch_size: int = 500) -> Tensor:
        return self.codes


def labelled(labels: Tensor) -> SimpleNamespace:
    """A datamodule stand-in: a train split with these labels."""
    return SimpleNamespace(name="fake", split=lambda name: SimpleNamespace(labels=labels))


def probe(codes: Tensor, labels: Tensor, tmp_path: Path, final: bool = True, seed: int = 0, **kwargs):
    ctx = EvalContext(Codes(codes), labelled(labels), tmp_path, torch.device("cpu"), seed=seed, final=final)
    with torch.no_grad():
        return CodeProbe(**kwargs)(ctx), ctx


def class_codes(n: int, dim: int = 16, noise: float = 0.05) -> tuple[Tensor, Tensor]:
    """Codes (n, dim) = a fixed linear map of the one-hot label + small noise, and the labels (n,)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(CLASSES, (n,), generator=g)
    mixing = torch.randn(CLASSES, dim, generator=g)
    one_hot = torch.nn.functional.one_hot(labels, CLASSES).float()
    return one_hot @ mixing + noise * torch.randn(n, dim, generator=g), labels


def test_codes_that_carry_the_labels_probe_near_perfectly_and_random_codes_at_chance(tmp_path):
    codes, labels = class_codes(3000)
    results, _ = probe(codes, labels, tmp_path)
    assert results["probe_linear_acc"] > 0.95 and results["probe_1nn_acc"] > 0.95
    assert set(results) == {"probe_linear_acc", "probe_1nn_acc"}  # no @sampler: sampler-independent

    noise = torch.randn(3000, 16, generator=torch.Generator().manual_seed(1))
    chance, _ = probe(noise, labels, tmp_path)
    assert chance["probe_linear_acc"] < 0.3 and chance["probe_1nn_acc"] < 0.3


def test_the_evaluator_is_deterministic_and_its_split_ignores_the_run_seed(tmp_path):
    codes, labels = class_codes(600, noise=1.0)  # noisy enough that a different split would change the values
    first, _ = probe(codes, labels, tmp_path)
    assert probe(codes, labels, tmp_path)[0] == first
    assert probe(codes, labels, tmp_path, seed=7)[0] == first  # the same held-out codes for every run


def test_nearest_neighbour_accuracy_matches_a_brute_force_search():
    g = torch.Generator().manual_seed(2)
    fit, held_out = torch.randn(200, 6, generator=g), torch.randn(50, 6, generator=g)
    fit_labels, held_labels = torch.randint(4, (200,), generator=g), torch.randint(4, (50,), generator=g)
    nearest = torch.cdist(held_out, fit).argmin(dim=1)
    expected = float((fit_labels[nearest] == held_labels).float().mean())
    assert nearest_neighbour_accuracy(fit, fit_labels, held_out, held_labels, chunk_size=16) == expected


def test_the_evaluators_1nn_accuracy_is_brute_force_on_standardised_codes(tmp_path):
    g = torch.Generator().manual_seed(3)
    scales = torch.tensor([1.0, 100.0, 0.01, 5.0, 1.0])  # standardising changes which neighbour is nearest
    codes, labels = torch.randn(120, 5, generator=g) * scales, torch.randint(4, (120,), generator=g)
    results, _ = probe(codes, labels, tmp_path)
    fit, held_out = holdout_split(120, 10000, None)
    mean, std = codes[fit].mean(dim=0), codes[fit].std(dim=0)
    nearest = torch.cdist((codes[held_out] - mean) / std, (codes[fit] - mean) / std).argmin(dim=1)
    expected = float((labels[fit][nearest] == labels[held_out]).float().mean())
    assert results["probe_1nn_acc"] == pytest.approx(expected, abs=1e-7)


def test_the_held_out_part_is_capped_at_a_sixth_and_the_fit_part_at_n_fit():
    fit, held_out = holdout_split(600, 10000, None)
    assert len(held_out) == 100 and len(fit) == 500
    assert sorted(torch.cat([fit, held_out]).tolist()) == list(range(600))  # a partition
    assert not torch.equal(held_out, torch.arange(500, 600))  # permuted: class-sorted data stays mixed
    small_fit, small_held = holdout_split(600, 40, 200)
    assert len(small_held) == 40 and torch.equal(small_fit, holdout_split(600, 40, None)[0][:200])
    assert not set(small_fit.tolist()) & set(small_held.tolist())


def test_linear_probe_separates_standardised_classes_and_runs_under_inference_mode():
    codes, labels = class_codes(1000)
    z_fit, z_held = standardise(codes[:800], codes[800:])
    torch.testing.assert_close(z_fit.mean(dim=0), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(z_fit.std(dim=0), torch.ones(16))
    with torch.inference_mode():  # `python -m genbench.evaluate` may hold it; the probe still fits
        accuracy = linear_probe_accuracy(z_fit, labels[:800], z_held, labels[800:], steps=50)
    assert accuracy > 0.95


def test_unlabelled_data_records_the_skip(tmp_path):
    codes, labels = class_codes(300)
    labels[::2] = -1
    results, ctx = probe(codes, labels, tmp_path)
    assert results == {} and "unlabelled" in ctx.records["skipped"]["probe"]
    assert "protocols" not in ctx.records


def test_periodic_evaluations_do_not_probe(tmp_path):
    class Refusing(Codes):
        def training_codes(self, datamodule, batch_size: int = 500) -> Tensor:
            raise AssertionError("a periodic evaluation must not ask for the codes")

    ctx = EvalContext(Refusing(None), labelled(torch.zeros(300)), tmp_path, torch.device("cpu"), final=False)
    assert CodeProbe()(ctx) == {} and ctx.records == {}


def test_protocols_say_what_was_fitted_and_held_out(tmp_path):
    codes, labels = class_codes(600)
    _, ctx = probe(codes, labels, tmp_path, n_holdout=50, n_fit=300, steps=20, weight_decay=1e-3)
    linear, nearest = ctx.records["protocols"]["probe_linear_acc"], ctx.records["protocols"]["probe_1nn_acc"]
    for protocol in (linear, nearest):
        assert protocol["codes"] == "training codes (model.training_codes)"
        assert (protocol["n_fit"], protocol["n_holdout"]) == (300, 50) and "mean" in protocol["standardised"]
    assert linear["steps"] == 20 and linear["weight_decay"] == 1e-3 and "L-BFGS" in linear["classifier"]
    assert nearest["classifier"] == "1-NN L2"
    assert not getattr(CodeProbe, "uses_samples", False)


class PixelEncoder(GenerativeModel):
    """encode(x) = a fixed projection of the 16 x 16 pixels; the contract's training_codes encodes the split."""

    latent_dim = 8
    sampler_name = "prior"

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("e", torch.randn(16 * 16, 8, generator=torch.Generator().manual_seed(0)))

    def encode(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.e

    def decode(self, z: Tensor) -> Tensor:
        return torch.sigmoid(z @ self.e.T).view(-1, 1, 16, 16)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.decode(torch.randn(n, 8, generator=generator))

    def reconstruct(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        return self.decode(self.encode(x))


def test_the_configured_probe_reads_digits_through_the_contract(tmp_path, monkeypatch):
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path / "cache"))
    cfg = compose_config(["data=digits"], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    evaluator = hydra.utils.instantiate(cfg.eval.evaluators.probe)
    results, _ = run_evaluators(
        {"probe": evaluator}, PixelEncoder(), datamodule, tmp_path, torch.device("cpu"), seed=0, final=True
    )
    n = len(datamodule.split("train"))
    assert results["protocols"]["probe_1nn_acc"]["n_holdout"] == n // 6
    # random projections of the digits still carry their classes
    assert results["probe_linear_acc"] > 0.5 and results["probe_1nn_acc"] > 0.5
