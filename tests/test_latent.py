"""Code projections and latent samplers (genbench.latent): shapes, fitted statistics against torch references,
nearest neighbours against brute force, IMLE's objective going down, state saved with the sampler."""

from __future__ import annotations

import pytest
import torch

from genbench.latent import (
    DiagonalGaussianSampler,
    GaussianSampler,
    IMLESampler,
    NormalSampler,
    nearest_neighbours,
    project,
)

SAMPLERS = {
    "normal": NormalSampler,
    "diagonal": DiagonalGaussianSampler,
    "gaussian": GaussianSampler,
    "imle": lambda d, p: IMLESampler(d, p, hidden=16, epochs=1),
}


def _codes(n: int = 500, d: int = 6) -> torch.Tensor:
    """Correlated, off-centre codes: a random linear map of N(0, I) plus a shift."""
    mix = torch.randn(d, d)
    return torch.randn(n, d) @ mix + torch.linspace(-1.0, 1.0, d)


def test_projections():
    z = torch.randn(100, 5) * torch.logspace(-2, 1, 100).unsqueeze(1)  # norms from ~0.02 to ~20
    norms = z.norm(dim=1)
    torch.testing.assert_close(project(z, "sphere").norm(dim=1), torch.ones(100))
    ball = project(z, "ball")
    inside = norms <= 1
    assert inside.any() and (~inside).any()
    torch.testing.assert_close(ball[inside], z[inside])  # the paper: only codes outside the ball move
    torch.testing.assert_close(ball[~inside].norm(dim=1), torch.ones(int((~inside).sum())))
    assert torch.equal(project(z, "none"), z)
    with pytest.raises(ValueError):
        project(z, "cube")


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("projection", ["sphere", "ball", "none"])
def test_sampler_shapes_projection_and_reproducibility(name, projection):
    sampler = SAMPLERS[name](6, projection)
    sampler.fit(_codes(200))
    z = sampler.sample(37, generator=torch.Generator().manual_seed(3))
    assert z.shape == (37, 6) and z.dtype == torch.float32 and torch.isfinite(z).all()
    if projection == "sphere":
        torch.testing.assert_close(z.norm(dim=1), torch.ones(37))
    elif projection == "ball":
        assert (z.norm(dim=1) <= 1 + 1e-5).all()
    torch.testing.assert_close(z, sampler.sample(37, generator=torch.Generator().manual_seed(3)))
    assert sampler.name == name


def test_unfitted_sampler_refuses_to_sample():
    with pytest.raises(RuntimeError, match="not been fitted"):
        GaussianSampler(4).sample(3)
    assert NormalSampler(4).sample(3).shape == (3, 4)  # nothing to fit


def test_gaussian_fit_matches_the_codes_statistics():
    codes = _codes(2000)
    sampler = GaussianSampler(6)
    sampler.fit(codes)
    torch.testing.assert_close(sampler.mean, codes.mean(dim=0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sampler.cov, torch.cov(codes.T), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        sampler.scale_tril @ sampler.scale_tril.T, torch.cov(codes.T), atol=1e-3, rtol=1e-3
    )
    # Projection "none": the draws are exactly Gaussian.
    draws = sampler.sample(50000, generator=torch.Generator().manual_seed(0))
    scale = torch.cov(codes.T).diagonal().sqrt()
    assert ((draws.mean(dim=0) - codes.mean(dim=0)).abs() / scale).max() < 0.05
    assert ((torch.cov(draws.T) - torch.cov(codes.T)).abs() / torch.outer(scale, scale)).max() < 0.05


def test_diagonal_fit_matches_the_codes_statistics():
    codes = _codes(2000)
    sampler = DiagonalGaussianSampler(6)
    sampler.fit(codes)
    torch.testing.assert_close(sampler.mean, codes.mean(dim=0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sampler.std, codes.std(dim=0), atol=1e-5, rtol=1e-5)
    draws = sampler.sample(50000, generator=torch.Generator().manual_seed(0))
    assert ((draws.std(dim=0) - codes.std(dim=0)).abs() / codes.std(dim=0)).max() < 0.03
    off_diagonal = torch.corrcoef(draws.T) - torch.eye(6)
    assert off_diagonal.abs().max() < 0.03  # independent dimensions


def test_nearest_neighbours_match_brute_force():
    queries, keys = torch.randn(103, 7), torch.randn(250, 7)
    dist, index = nearest_neighbours(queries, keys, chunk=16)  # many blocks in both directions
    full = torch.cdist(queries.double(), keys.double()).pow(2)
    assert torch.equal(index, full.argmin(dim=1))
    torch.testing.assert_close(dist.double(), full.min(dim=1).values, atol=1e-4, rtol=1e-4)


def test_imle_lowers_its_matching_loss():
    torch.manual_seed(0)
    centres = project(torch.randn(4, 8), "sphere") * 2
    codes = centres[torch.arange(400) % 4] + 0.05 * torch.randn(400, 8)  # four tight clusters
    sampler = IMLESampler(8, "none", noise_dim=4, hidden=32, epochs=15, batch_size=50, lr=3e-3)
    before = sampler.matching_loss(codes, torch.Generator().manual_seed(1))
    sampler.fit(codes)
    after = sampler.matching_loss(codes, torch.Generator().manual_seed(1))
    assert after < 0.25 * before, (before, after)
    assert bool(sampler.fitted)


@pytest.mark.parametrize("name", ["gaussian", "diagonal", "imle"])
def test_fitted_sampler_state_survives_a_state_dict_round_trip(name):
    fitted = SAMPLERS[name](6, "sphere")
    fitted.fit(_codes(200))
    fresh = SAMPLERS[name](6, "sphere")
    fresh.load_state_dict(fitted.state_dict())
    assert bool(fresh.fitted)
    torch.testing.assert_close(
        fresh.sample(5, torch.Generator().manual_seed(0)), fitted.sample(5, torch.Generator().manual_seed(0))
    )
