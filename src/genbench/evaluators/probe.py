"""``probe_linear_acc`` and ``probe_1nn_acc``: how well the labels can be read off a model's codes.

The codes are ``model.training_codes(datamodule)`` (N, D), in train-split order (GLO: its learned table; VAE,
MMD-VAE: the encoder means; ALAE: w = E(x)), with the train split's labels. A fixed permutation (seed
``HOLDOUT_SEED``, not the run's seed) holds out ``n_holdout`` codes (at most N / 6) and leaves the rest to fit
(the first ``n_fit`` of them when set): every run on a dataset is scored on the same held-out images whatever its
seed, and a source stored in class order cannot leave whole classes out of either part (which taking the last rows
would). Codes are standardised by the fit part's per-dimension mean and standard deviation, then

- ``probe_linear_acc``: held-out accuracy of a multinomial logistic regression (full-batch L-BFGS, small L2): the
  cheap offline stand-in for the linear-SVM accuracy of the codes that ALAE (Pidhorskyi et al. 2020) reports;
- ``probe_1nn_acc``: held-out accuracy of the nearest fit code's label (L2), as the ALAE reference code's MNIST
  branch reports.

Neither depends on the sampler (no ``@<sampler>`` suffix, no ``uses_samples``). Final evaluation only, rank 0
only; skipped with a reason for unlabelled datasets. MNIST (60k x 64 codes) takes a few seconds on a 2-core CPU.
"""

from __future__ import annotations

import logging
import time

import torch

from genbench.evaluators.base import EvalContext
from genbench.metrics.probe import linear_probe_accuracy, nearest_neighbour_accuracy, standardise

log = logging.getLogger(__name__)

HOLDOUT_SEED = 0
CODES = "training codes (model.training_codes)"


def holdout_split(n: int, n_holdout: int, n_fit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, held-out) row indices into N codes: a permutation of seed ``HOLDOUT_SEED``, its last
    min(n_holdout, N // 6) rows held out and its first (at most ``n_fit``) rows fitted to."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    m = min(n_holdout, n // 6)
    fit = order[: n - m]
    return (fit if n_fit is None else fit[:n_fit]), order[n - m :]


class CodeProbe:
    """Linear and 1-NN probes of the training codes (see the module docstring): ``n_holdout`` held-out codes,
    ``n_fit`` fit codes (null: all the others), ``steps`` L-BFGS iterations with L2 ``weight_decay``."""

    def __init__(
        self, n_holdout: int = 10000, n_fit: int | None = None, steps: int = 100, weight_decay: float = 1e-4
    ) -> None:
        if n_holdout < 1 or (n_fit is not None and n_fit < 1) or steps < 1 or weight_decay < 0:
            raise ValueError("need n_holdout, n_fit (or null), steps >= 1 and weight_decay >= 0")
        self.n_holdout, self.n_fit, self.steps, self.weight_decay = n_holdout, n_fit, steps, weight_decay

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        if not ctx.final:
            return {}
        labels = ctx.datamodule.split("train").labels
        n = len(labels)
        reason = None
        if n and bool((labels < 0).any()):
            reason = f"{ctx.datamodule.name} has unlabelled training images (label -1)"
        elif n < 12:
            reason = f"the train split has {n} images; the probe needs at least 12"
        if reason is not None:
            log.info("probe skipped: %s", reason)
            ctx.records.setdefault("skipped", {})["probe"] = reason
            return {}

        started = time.perf_counter()
        codes = ctx.model.training_codes(ctx.datamodule).detach().float()  # (N, D)
        coded = time.perf_counter()
        fit, held_out = holdout_split(n, self.n_holdout, self.n_fit)
        fit, held_out = fit.to(codes.device), held_out.to(codes.device)
        labels = labels.to(codes.device)
        z_fit, z_held = standardise(codes[fit], codes[held_out])
        y_fit, y_held = labels[fit], labels[held_out]
        linear = linear_probe_accuracy(z_fit, y_fit, z_held, y_held, self.steps, self.weight_decay)
        nearest = nearest_neighbour_accuracy(z_fit, y_fit, z_held, y_held)
        log.info(
            "probe of %d fit / %d held-out codes of dim %d: linear acc %.4f, 1-NN acc %.4f in %.1fs "
            "(+ %.1fs for the codes)",
            len(fit), len(held_out), codes.shape[1], linear, nearest, time.perf_counter() - coded,
            coded - started,
        )  # fmt: skip

        common = {
            "codes": CODES,
            "n_fit": len(fit),
            "n_holdout": len(held_out),
            "split": f"a permutation of the train split (seed {HOLDOUT_SEED}): its last n_holdout held out",
            "standardised": "by the fit codes' per-dimension mean and std",
        }
        protocols = ctx.records.setdefault("protocols", {})
        protocols["probe_linear_acc"] = {
            **common,
            "classifier": "multinomial logistic regression, full-batch L-BFGS (strong Wolfe) from zero weights",
            "steps": self.steps,
            "weight_decay": self.weight_decay,
        }
        protocols["probe_1nn_acc"] = {**common, "classifier": "1-NN L2"}
        return {"probe_linear_acc": linear, "probe_1nn_acc": nearest}


__all__ = ["CodeProbe", "holdout_split"]
