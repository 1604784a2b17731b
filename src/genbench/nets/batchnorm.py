"""Batch-norm statistics recomputed after training (shared by the GLO family)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn


def recalibrate_batch_norm(net: nn.Module, batches: Iterable[Tensor]) -> None:
    """Recompute ``net``'s batch-norm running statistics as a cumulative average over ``batches`` in train mode.

    "Precise BN": after training, the running averages (momentum 0.1) still hold much of their initial state;
    one pass over the training inputs with the final weights fixes eval mode.
    Deterministic for fixed batches, so DDP ranks end with the same statistics.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training, momenta = net.training, [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    net.train()
    for inputs in batches:
        net(inputs)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    net.train(was_training)
