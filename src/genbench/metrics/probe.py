"""Probes of a representation: how well labels can be read off codes, on plain tensors.

- ``linear_probe_accuracy``: multinomial logistic regression (softmax over ``W z + b``), fitted full-batch by
  L-BFGS from zero weights (deterministic), with an L2 penalty on W; accuracy on held-out codes.
- ``nearest_neighbour_accuracy``: the label of each held-out code's nearest fit code (L2, through
  :func:`genbench.metrics.knn.knn`) against its own.
- ``standardise``: codes scaled by the fit codes' per-dimension mean and standard deviation.

Never imports Lightning or models.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genbench.metrics.knn import knn

STD_FLOOR = 1e-8  # a constant dimension is centred, not divided by zero


def standardise(fit: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """``fit`` (N, D) and each of ``others`` (M, D) as (z - mean) / std, mean and std (unbiased) of ``fit``."""
    mean, std = fit.mean(dim=0), fit.std(dim=0).clamp_min(STD_FLOOR)
    return tuple((z - mean) / std for z in (fit, *others))


def linear_probe_accuracy(
    fit: Tensor,
    fit_labels: Tensor,
    held_out: Tensor,
    held_out_labels: Tensor,
    steps: int = 100,
    weight_decay: float = 1e-4,
) -> float:
    """Accuracy on ``held_out`` (M, D) of a softmax classifier fitted to ``fit`` (N, D) with int64 labels (N,).

    The loss is the mean cross-entropy + ``weight_decay / 2 * ||W||^2`` (the bias is not penalised), minimised by
    ``torch.optim.LBFGS`` (strong-Wolfe line search) for at most ``steps`` iterations from zero weights. The
    classes are 0 .. max label of either set. Gradients are enabled here, whatever the caller's mode.
    """
    if fit.dim() != 2 or held_out.dim() != 2 or fit.shape[1] != held_out.shape[1]:
        raise ValueError(f"need (N, D) and (M, D) codes, got {tuple(fit.shape)} and {tuple(held_out.shape)}")
    if steps < 1 or weight_decay < 0:
        raise ValueError(f"need steps >= 1 and weight_decay >= 0, got {steps} and {weight_decay}")
    n_classes = int(max(fit_labels.max(), held_out_labels.max())) + 1
    with torch.inference_mode(False), torch.enable_grad():  # evaluation runs under no_grad / inference mode
        x, y = fit.detach().clone().float(), fit_labels.detach().clone().to(fit.device)
        weight = torch.zeros(x.shape[1], n_classes, device=x.device, requires_grad=True)  # (D, C)
        bias = torch.zeros(n_classes, device=x.device, requires_grad=True)  # (C,)
        optimiser = torch.optim.LBFGS(
            [weight, bias], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
        )

        def closure() -> Tensor:
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ weight + bias, y)
            loss = loss + 0.5 * weight_decay * weight.pow(2).sum()
            loss.backward()
            return loss

        optimiser.step(closure)
        weight, bias = weight.detach(), bias.detach()
    predicted = (held_out.float() @ weight + bias).argmax(dim=1)  # (M,)
    return float((predicted == held_out_labels.to(predicted.device)).float().mean())


def nearest_neighbour_accuracy(
    fit: Tensor, fit_labels: Tensor, held_out: Tensor, held_out_labels: Tensor, chunk_size: int = 2048
) -> float:
    """Share of ``held_out`` codes (M, D) whose nearest ``fit`` code (N, D), in L2, has the same label (1-NN
    classification; on equal distances the lower fit index wins)."""
    _, index = knn(held_out, fit, k=1, chunk_size=chunk_size)  # (M, 1)
    predicted = fit_labels.to(index.device)[index[:, 0]]
    return float((predicted == held_out_labels.to(index.device)).float().mean())


__all__ = ["linear_probe_accuracy", "nearest_neighbour_accuracy", "standardise"]
