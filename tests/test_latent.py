"""Code projections and latent samplers (genbench.latent, genbench.gmm, genbench.imle, genbench.ivf): shapes,
fitted statistics against torch references and known mixtures, nearest neighbours against brute force, IMLE's
objective going down and its fit stopping on request or SIGTERM, state restored exactly from a state dict."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from genbench.gmm import GaussianMixtureSampler
from genbench.imle import IMLESampler
from genbench.ivf import ivf_nearest, kmeans, kmeans_plus_plus
from genbench.latent import (
    DiagonalGaussianSampler,
    GaussianSampler,
    NormalSampler,
    SamplerFitInterrupted,
    nearest_neighbours,
    project,
)

SAMPLERS = {
    "normal": NormalSampler,
    "diagonal": DiagonalGaussianSampler,
    "gaussian": GaussianSampler,
    "gmm": lambda d, p: GaussianMixtureSampler(d, p, components=3, iterations=5),
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


def _clusters(n: int = 400, d: int = 8, k: int = 4) -> torch.Tensor:
    """``k`` tight clusters on a sphere of radius 2."""
    centres = project(torch.randn(k, d), "sphere") * 2
    return centres[torch.arange(n) % k] + 0.05 * torch.randn(n, d)


@pytest.mark.parametrize("search", ["exact", "ivf"])
def test_imle_lowers_its_matching_loss(search):
    codes = _clusters()
    sampler = IMLESampler(
        8, "none", noise_dim=4, hidden=32, epochs=15, batch_size=50, lr=3e-3, search=search, lists=8, probes=2
    )
    before = sampler.matching_loss(codes, torch.Generator().manual_seed(1))
    sampler.fit(codes)
    after = sampler.matching_loss(codes, torch.Generator().manual_seed(1))
    assert after < 0.25 * before, (before, after)
    assert bool(sampler.fitted)
    losses = [h["matching_loss"] for h in sampler.history]
    assert len(losses) == 15 and losses[-1] < 0.25 * losses[0], losses
    assert sum(b < a for a, b in zip(losses, losses[1:], strict=False)) >= 10  # falls epoch after epoch


def test_imle_search_choice():
    sampler = IMLESampler(64)
    assert sampler.search_for(2000) == "exact"  # digits-sized: the exact matching is cheap
    assert sampler.search_for(60000) == "ivf"  # MNIST on a CPU
    assert IMLESampler(64, search="exact").search_for(60000) == "exact"
    with pytest.raises(ValueError, match="search"):
        IMLESampler(4, search="faiss")


def test_imle_fit_stops_when_asked():
    polls = []

    def after_three_polls() -> bool:
        polls.append(time.perf_counter())
        return len(polls) > 3

    sampler = IMLESampler(8, noise_dim=4, hidden=16, epochs=1000, batch_size=50)
    with pytest.raises(SamplerFitInterrupted, match="stopped on request"):
        sampler.fit(_clusters(), should_stop=after_three_polls)
    assert len(polls) == 4  # it stopped at the first True
    assert sampler.history == []  # polls: epoch start, after the draws, after the matching, regression step 0
    assert not bool(sampler.fitted)
    with pytest.raises(RuntimeError, match="not been fitted"):
        sampler.sample(2)


def test_a_sigterm_stops_an_imle_fit_promptly(tmp_path):
    """A process whose SIGTERM handler sets the flag ``should_stop`` reads stops its fit and exits 143."""
    script = tmp_path / "fit.py"
    script.write_text(
        textwrap.dedent(
            """
            import signal, sys, torch
            from genbench.imle import IMLESampler
            from genbench.latent import SamplerFitInterrupted

            received = []
            signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))

            def should_stop():
                if not should_stop.announced:
                    should_stop.announced = True
                    print("fitting", flush=True)
                return bool(received)

            should_stop.announced = False
            torch.optim.Adam([torch.zeros(1)])  # the first optimiser imports torch._dynamo: seconds, once
            sampler = IMLESampler(16, noise_dim=8, hidden=32, epochs=100000, search="exact")
            try:
                sampler.fit(torch.randn(3000, 16), should_stop=should_stop)
            except SamplerFitInterrupted as exc:
                print("stopped:", exc, flush=True)
                sys.exit(128 + received[0])
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "fitting"
        time.sleep(0.5)  # well inside the fit
        child.send_signal(signal.SIGTERM)
        sent = time.perf_counter()
        stopped = child.stdout.readline()
        latency = time.perf_counter() - sent
        child.communicate(timeout=60)  # the interpreter's exit (torch's atexit hooks) is slow under load
    finally:
        child.kill()
    assert stopped.startswith("stopped: the imle fit stopped on request"), stopped
    assert latency < 5, latency
    assert child.returncode == 128 + signal.SIGTERM


# -- IVF search and k-means (genbench.ivf) -----------------------------------------------------------------------------


def test_ivf_with_every_cell_probed_is_exact():
    keys, queries = torch.randn(600, 5), torch.randn(150, 5)
    centroids, cells = kmeans(keys, keys[:12], 3)
    dist, index = ivf_nearest(queries, keys, centroids, cells, probes=12, chunk_size=32)
    ref_dist, ref_index = nearest_neighbours(queries, keys)
    assert torch.equal(index, ref_index)
    torch.testing.assert_close(dist, ref_dist, atol=1e-5, rtol=1e-5)


def test_ivf_finds_most_neighbours_probing_few_cells():
    keys = _clusters(4000, 16, 10)
    queries = _clusters(500, 16, 10)
    centroids, cells = kmeans(keys, keys[torch.randperm(4000)[:40]], 5)
    dist, index = ivf_nearest(queries, keys, centroids, cells, probes=4)
    ref_dist, ref_index = nearest_neighbours(queries, keys)
    assert (index == ref_index).float().mean() > 0.9
    assert (dist >= ref_dist - 1e-5).all()  # never nearer than the true nearest
    torch.testing.assert_close(dist, (queries - keys[index]).pow(2).sum(dim=1), atol=1e-4, rtol=1e-4)


def test_ivf_query_whose_probed_cells_are_empty_gets_its_exact_neighbour():
    """k-means can leave cells without keys (the IMLE fit of codes at N(0, 0.01^2) matched nothing for some codes:
    matching loss inf, and index -1 silently picked the last noise row as their regression target)."""
    keys = torch.randn(200, 4)
    centroids = torch.cat(
        [keys[:50].mean(0, keepdim=True), torch.full((3, 4), 100.0)]
    )  # 3 far cells, no keys
    cells = torch.zeros(200, dtype=torch.long)  # every key in cell 0
    queries = torch.cat([torch.randn(20, 4), torch.full((5, 4), 99.0)])  # the last 5 probe only empty cells
    dist, index = ivf_nearest(queries, keys, centroids, cells, probes=1)
    ref_dist, ref_index = nearest_neighbours(queries, keys)
    assert torch.equal(index, ref_index) and torch.isfinite(dist).all()
    torch.testing.assert_close(dist, ref_dist, atol=1e-3, rtol=1e-5)


def test_kmeans_centroids_are_the_means_of_their_cells():
    x = torch.randn(300, 3)
    centroids, cells = kmeans(x, x[:5], 4)
    for c in range(5):
        torch.testing.assert_close(centroids[c], x[cells == c].mean(dim=0))


def test_kmeans_plus_plus_seeds_spread_and_reproduce():
    x = _clusters(400, 4, 4)
    seeds = kmeans_plus_plus(x, 4, torch.Generator().manual_seed(5))
    again = kmeans_plus_plus(x, 4, torch.Generator().manual_seed(5))
    assert torch.equal(seeds, again)
    owner = torch.cdist(seeds, x[:4]).argmin(dim=1)  # x[:4]: one point of each cluster
    assert sorted(owner.tolist()) == [0, 1, 2, 3]  # one seed in every cluster (near certain for tight ones)


# -- Gaussian mixture (genbench.gmm) -----------------------------------------------------------------------------------


def _mixture_data(n: int = 6000):
    weights = torch.tensor([0.5, 0.3, 0.2])
    means = torch.tensor([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, 5.0, -2.0]])
    tril = (
        torch.tensor([[[1.0, 0, 0], [0.5, 0.8, 0], [0, 0.3, 0.6]]] * 3)
        * torch.tensor([0.6, 0.4, 0.8])[:, None, None]
    )
    component = torch.multinomial(weights, n, replacement=True, generator=torch.Generator().manual_seed(0))
    x = means[component] + torch.einsum("nde,ne->nd", tril[component], torch.randn(n, 3))
    return x, weights, means, tril @ tril.transpose(1, 2)


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_gmm_recovers_a_known_mixture(covariance):
    x, weights, means, covs = _mixture_data()
    sampler = GaussianMixtureSampler(3, components=3, covariance=covariance, iterations=100, tol=1e-8)
    sampler.fit(x, torch.Generator().manual_seed(1))
    match = torch.cdist(means, sampler.means).argmin(dim=1)  # true component -> fitted one
    assert sorted(match.tolist()) == [0, 1, 2]
    torch.testing.assert_close(sampler.weights[match], weights, atol=0.02, rtol=0)
    torch.testing.assert_close(sampler.means[match], means, atol=0.05, rtol=0)
    if covariance == "full":
        fitted = sampler.scales @ sampler.scales.transpose(1, 2)
        torch.testing.assert_close(fitted[match], covs, atol=0.04, rtol=0)
    else:
        torch.testing.assert_close(
            sampler.scales[match].pow(2), covs.diagonal(dim1=1, dim2=2), atol=0.04, rtol=0
        )
    assert len(sampler.history) >= 2


def test_gmm_log_likelihood_never_decreases_over_em_iterations():
    x, *_ = _mixture_data()
    x = x * torch.tensor(
        [0.3, 0.3, 1.0]
    )  # overlapping components: EM needs many iterations from random seeds
    sampler = GaussianMixtureSampler(3, components=4, init="random", iterations=60, tol=0)
    sampler.fit(x)
    history = sampler.history
    assert len(history) == 61 and history[-1] > history[0] + 0.05, history
    assert all(b >= a - 1e-6 for a, b in zip(history, history[1:], strict=False)), history


def test_gmm_log_likelihood_matches_torch_distributions():
    x, *_ = _mixture_data(2000)
    sampler = GaussianMixtureSampler(3, components=3, iterations=20)
    sampler.fit(x)
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=sampler.weights.double()),
        torch.distributions.MultivariateNormal(sampler.means.double(), scale_tril=sampler.scales.double()),
    )
    torch.testing.assert_close(sampler.log_likelihood(x[:100]), reference.log_prob(x[:100].double()))
    torch.testing.assert_close(
        sampler.history[-1], float(reference.log_prob(x.double()).mean()), atol=1e-4, rtol=0
    )


def test_gmm_samples_follow_the_fitted_mixture():
    x, weights, means, _ = _mixture_data()
    sampler = GaussianMixtureSampler(3, components=3, iterations=50)
    sampler.fit(x)
    draws = sampler.sample(20000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws.mean(dim=0), x.mean(dim=0), atol=0.06, rtol=0)
    nearest = torch.cdist(draws, means).argmin(dim=1)
    torch.testing.assert_close(torch.bincount(nearest, minlength=3) / 20000.0, weights, atol=0.02, rtol=0)


def test_gmm_fit_is_reproducible_and_refuses_bad_settings():
    x, *_ = _mixture_data(1000)
    first = GaussianMixtureSampler(3, components=3, init="random", seed=4)
    second = GaussianMixtureSampler(3, components=3, init="random", seed=4)
    first.fit(x)
    second.fit(x)
    assert torch.equal(first.means, second.means) and first.history == second.history
    for bad in ({"covariance": "spherical"}, {"init": "kmeans"}, {"components": 0}):
        with pytest.raises(ValueError):
            GaussianMixtureSampler(3, **bad)


def test_gmm_fit_stops_when_asked():
    sampler = GaussianMixtureSampler(3, components=3, iterations=100, tol=0)
    calls = []
    with pytest.raises(SamplerFitInterrupted):
        sampler.fit(_mixture_data(1000)[0], should_stop=lambda: calls.append(1) or len(calls) > 2)
    assert len(calls) == 3 and not bool(sampler.fitted)


# -- state dicts ---------------------------------------------------------------------------------------------------------


ROUND_TRIP = {
    **SAMPLERS,
    "gmm_diagonal": lambda d, p: GaussianMixtureSampler(d, p, components=3, covariance="diagonal"),
    "imle_ivf": lambda d, p: IMLESampler(d, p, hidden=16, epochs=2, search="ivf", lists=4, probes=2),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_fitted_sampler_state_survives_a_state_dict_round_trip(name, tmp_path):
    fitted = ROUND_TRIP[name](6, "sphere")
    fitted.fit(_codes(200))
    torch.save(fitted.state_dict(), tmp_path / "sampler.pt")
    fresh = ROUND_TRIP[name](6, "sphere")
    fresh.load_state_dict(torch.load(tmp_path / "sampler.pt", weights_only=True))
    assert bool(fresh.fitted)
    for key, value in fitted.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    torch.testing.assert_close(
        fresh.sample(5, torch.Generator().manual_seed(0)), fitted.sample(5, torch.Generator().manual_seed(0))
    )
