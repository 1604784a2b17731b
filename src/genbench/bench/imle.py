"""GLANN's IMLE fit at its published size: 60k MNIST-like codes (latent 64 on the sphere), noise 32, 50 epochs,
2 draws per code (yedidh/glann). Reports the fit's seconds, codes per second and the matching loss per epoch, and,
on a subsample, how much slower the exact matching is and how often the IVF search finds the exact nearest draw.

The codes are real MNIST train images projected on their 64 principal directions and normalised to the sphere
(GLO's code geometry, without training a GLO) when the data root has MNIST, else a 10-component mixture on the
sphere. ``python -m genbench.bench --imle [--data-root DIR] [--device cuda] [--quick]``.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

import torch

log = logging.getLogger(__name__)

N_CODES, LATENT, NOISE, EPOCHS = 60000, 64, 32, 50
SUBSAMPLE = 4000  # codes whose matching is timed exactly and checked against the IVF search


def mnist_codes(data_root: str, dim: int = LATENT) -> torch.Tensor:
    """(60000, dim) unit-norm codes: MNIST train images (genbench's datamodule) on their top principal axes."""
    from genbench.data import ImageDataModule
    from genbench.data.sources import IDXSource

    datamodule = ImageDataModule("mnist", functools.partial(IDXSource, folder="MNIST"), data_root, 28, 1)
    x = datamodule.images("train").flatten(1)  # (60000, 784) in [0, 1]
    x = x - x.mean(dim=0)
    _, _, axes = torch.pca_lowrank(x, q=dim, center=False, niter=3)
    return torch.nn.functional.normalize(x @ axes, dim=1)


def mixture_codes(n: int = N_CODES, dim: int = LATENT, components: int = 10, seed: int = 0) -> torch.Tensor:
    """(n, dim) unit-norm codes from ``components`` anisotropic Gaussian clusters, projected on the sphere."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(components, dim, generator=g)
    spread = torch.randn(components, dim, dim, generator=g) * 0.08
    which = torch.randint(components, (n,), generator=g)
    z = centres[which] + torch.einsum("nde,ne->nd", spread[which], torch.randn(n, dim, generator=g))
    return torch.nn.functional.normalize(z, dim=1)


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_imle(
    data_root: str | None, device: torch.device, epochs: int = EPOCHS, search: str = "auto"
) -> dict[str, Any]:
    """Fit GLANN's IMLE sampler once and time it; see the module docstring."""
    from genbench.imle import IMLESampler
    from genbench.ivf import ivf_nearest, kmeans
    from genbench.latent import _noise, nearest_neighbours

    source = "mnist_pca64_sphere"
    try:
        codes = mnist_codes(data_root) if data_root else None
    except Exception as exc:  # noqa: BLE001 - any unreadable data falls back to synthetic codes, said in the output
        log.warning("imle bench: no MNIST codes (%s); using a mixture on the sphere", exc)
        codes = None
    if codes is None:
        codes, source = mixture_codes(), "mixture10_sphere"
    codes = codes.to(device)
    torch.optim.Adam(
        [torch.zeros(1)]
    )  # torch.optim imports torch._dynamo on first use: seconds, not the fit's
    sampler = IMLESampler(LATENT, "sphere", noise_dim=NOISE, epochs=epochs, search=search).to(device)
    load_before = _load_average()
    _sync(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    sampler.fit(codes)
    _sync(device)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started

    # The matching of one epoch on a subsample: exact vs the fit's search, from the fitted mapper's draws.
    g = torch.Generator(device=device).manual_seed(1)
    draws = sampler._mapped(_noise(sampler.draws_per_code * len(codes), NOISE, g, device))
    sub = codes[torch.randperm(len(codes), generator=g, device=device)[:SUBSAMPLE]]
    _sync(device)
    t = time.perf_counter()
    exact_dist, exact_index = nearest_neighbours(sub, draws)
    _sync(device)
    exact_full_epoch = (time.perf_counter() - t) * len(codes) / SUBSAMPLE
    centroids, cells = kmeans(draws, draws[: min(sampler.lists, len(draws))], 3)
    ivf_dist, ivf_index = ivf_nearest(sub, draws, centroids, cells, sampler.probes)
    history = sampler.history
    return {
        "codes": source,
        "n_codes": len(codes),
        "latent_dim": LATENT,
        "noise_dim": NOISE,
        "epochs": epochs,
        "draws_per_code": sampler.draws_per_code,
        "search": sampler.search_for(len(codes)),
        "lists": sampler.lists,
        "probes": sampler.probes,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "fit_seconds": seconds,
        # CPU time of this process: on a contended machine, about what the fit would take alone on one core
        "fit_cpu_seconds": cpu_seconds,
        "load_average": [load_before, _load_average()],
        "codes_per_second": len(codes) * epochs / seconds,
        "epoch_seconds": [h["seconds"] for h in history],
        "matching_loss": [h["matching_loss"] for h in history],
        "regression_loss": [h["regression_loss"] for h in history],
        "exact_matching_epoch_seconds_estimate": exact_full_epoch,
        "ivf_recall": float((ivf_index == exact_index).float().mean()),
        "ivf_over_exact_distance": float(ivf_dist.mean() / exact_dist.mean().clamp_min(1e-12)),
    }


def format_imle(result: dict[str, Any]) -> str:
    losses = result["matching_loss"]
    lines = [
        f"IMLE (GLANN) fit: {result['n_codes']} codes ({result['codes']}), latent {result['latent_dim']}, noise "
        f"{result['noise_dim']}, {result['epochs']} epochs x {result['draws_per_code']} draws per code, "
        f"{result['search']} matching on {result['device']} ({result['threads']} threads)",
        f"  fit {result['fit_seconds']:.1f} s ({result['fit_cpu_seconds']:.1f} CPU s; load average "
        f"{result['load_average'][0]}), {result['codes_per_second']:.0f} codes/s "
        f"(exact matching alone: ~{result['exact_matching_epoch_seconds_estimate']:.1f} s per epoch)",
        f"  IVF ({result['lists']} cells, {result['probes']} probed): exact nearest draw for "
        f"{100 * result['ivf_recall']:.2f}% of codes, mean distance x{result['ivf_over_exact_distance']:.4f}",
        "  matching loss per epoch: " + " ".join(f"{v:.4f}" for v in losses),
    ]
    return "\n".join(lines)


__all__ = ["bench_imle", "format_imle", "mixture_codes", "mnist_codes"]
