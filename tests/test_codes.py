"""Learned codes: the SparseAdam-equivalent update against torch.optim.SparseAdam, how far a row moves under each
bias correction, and the latent geometry GLO's projection implies (the interpolations follow it)."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from genbench.codes import CodeTable, LearnedCodes
from genbench.evaluators.interpolation import interpolate, latent_geometry
from genbench.latent import NormalSampler
from helpers import compose_config


def _batches(n_rows: int, steps: int, batch: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # with replacement: rows repeat within a batch and are skipped for many steps, the cases that differ
    return [torch.randint(0, n_rows, (batch,), generator=generator) for _ in range(steps)]


def test_global_bias_correction_is_exactly_sparse_adam():
    n, dim, lr, betas = 40, 5, 0.01, (0.5, 0.999)
    start = torch.randn(n, dim, generator=torch.Generator().manual_seed(1))
    target = torch.randn(n, dim, generator=torch.Generator().manual_seed(2))
    table = CodeTable(n, dim, projection="none", betas=betas, bias_correction="global")
    table.weight.copy_(start)
    embedding = torch.nn.Embedding(n, dim, sparse=True)
    embedding.weight.data.copy_(start)
    reference = torch.optim.SparseAdam(embedding.parameters(), lr=lr, betas=betas)
    for index in _batches(n, 60, 7):
        z = table.weight[index].detach().requires_grad_(True)
        ((z - target[index]) ** 3).sum().backward()  # a non-quadratic loss: gradients vary with the codes
        table.update(index, z.grad, lr)
        reference.zero_grad()
        ((embedding(index) - target[index]) ** 3).sum().backward()
        reference.step()
    torch.testing.assert_close(table.weight, embedding.weight.detach(), rtol=1e-5, atol=1e-6)
    assert int(table.updates) == 60


def test_row_correction_moves_a_row_lr_per_visit_and_global_several_times_more():
    """A row first visited at update t: row-wise Adam moves it lr per element (the first Adam step is sign(g));
    SparseAdam moves it lr (1 - b1) sqrt(1 - b2^t) / ((1 - b1^t) sqrt(1 - b2)): 2.5x at t = 1000, betas (0.9,
    0.999); 12.6x at GLANN's betas (0.5, 0.999)."""
    n, dim, lr, (b1, b2), t = 2000, 4, 0.01, (0.9, 0.999), 1000
    moved = {}
    for correction in ("row", "global"):
        table = CodeTable(n, dim, projection="none", betas=(b1, b2), bias_correction=correction)
        for step in range(t - 1):  # t - 1 updates of other rows
            table.update(torch.tensor([1 + step % (n - 1)]), torch.ones(1, dim), lr)
        before = table.weight[0].clone()
        table.update(torch.tensor([0]), torch.full((1, dim), 3.0), lr)
        moved[correction] = (before - table.weight[0]).abs()
    torch.testing.assert_close(moved["row"], torch.full((dim,), lr), rtol=1e-4, atol=0)
    expected = lr * (1 - b1) * math.sqrt(1 - b2**t) / ((1 - b1**t) * math.sqrt(1 - b2))
    torch.testing.assert_close(moved["global"], torch.full((dim,), expected), rtol=1e-4, atol=0)
    assert expected / lr > 2


def test_bad_bias_correction_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="bias_correction must be one of"):
        CodeTable(3, 2, bias_correction="dense")


@pytest.mark.parametrize(
    ("projection", "geometry"), [("sphere", "sphere"), ("ball", "euclidean"), ("none", "euclidean")]
)
def test_learned_codes_geometry_follows_the_projection(projection, geometry):
    codes = LearnedCodes(4, lambda **kw: NormalSampler(**kw), projection=projection)
    assert codes.latent_geometry == geometry


def test_glo_on_the_sphere_interpolates_along_great_circles(tmp_path):
    """The GLO model (not a stand-in) says its codes live on the sphere, so its interpolations stay on it."""
    cfg = compose_config(["model=glo", "model.projection=sphere"], tmp_path)
    model = instantiate(cfg.model)
    assert latent_geometry(model) == "sphere"
    a = torch.nn.functional.normalize(torch.randn(3, model.latent_dim), dim=1)
    b = torch.nn.functional.normalize(torch.randn(3, model.latent_dim), dim=1)
    path = interpolate(a, b, 7, latent_geometry(model))
    torch.testing.assert_close(path.norm(dim=2), torch.ones(3, 7))
    none = instantiate(compose_config(["model=glo", "model.projection=none"], tmp_path).model)
    assert latent_geometry(none) == "euclidean"


def test_test_reconstructions_record_how_unseen_images_were_encoded(tmp_path):
    """recon_*_test of a GLO carries its inversion settings in the protocol (another setting is another
    protocol on re-evaluation); a VAE's says its encoder did it."""
    from genbench.callbacks.evaluation import run_evaluators
    from genbench.evaluators.reconstruction import ReconstructionMSE

    overrides = ["data=digits", "model.init=gaussian", "eval.inversion_steps=2"]
    cfg = compose_config(["model=glo", *overrides], tmp_path)
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    datamodule.setup("fit")
    model.codes.prepare(len(datamodule.split("train")), None, torch.device("cpu"), seed=0)
    evaluator = {"reconstruction": ReconstructionMSE(n_images=8, batch_size=8, inverted_n_images=6)}
    results, _ = run_evaluators(evaluator, model, datamodule, tmp_path, torch.device("cpu"), 0, final=True)
    test = results["protocols"]["recon_mse_test"]
    assert test["n_images"] == 6 and test["split"] == "test"  # inversion is capped at inverted_n_images
    assert results["protocols"]["recon_mse_train"]["n_images"] == 8
    assert test["inversion_steps"] == 2 and test["inversion_start"] == "best_of_k"
    assert test["inversion_candidates"] == cfg.model.inversion_candidates and test["inversion_lr"] == 0.1
    assert results["protocols"]["recon_psnr_test"] == test
    assert "inversion_steps" not in results["protocols"]["recon_mse_train"]  # learned codes, no inversion
    vae = instantiate(compose_config(["model=vae", *overrides[:1]], tmp_path).model)
    results, _ = run_evaluators(evaluator, vae, datamodule, tmp_path, torch.device("cpu"), 0, final=True)
    assert results["protocols"]["recon_mse_test"] == {
        "split": "test",
        "n_images": 8,
        "encode": "encoder",
    }  # not capped
