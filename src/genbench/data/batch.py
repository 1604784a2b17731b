"""The batch every datamodule yields and every model consumes."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class Batch(NamedTuple):
    """One training batch.

    image: (B, C, H, W) float in [0, 1], on the training device.
    label: (B,) int64 class label, -1 where the dataset has none.
    index: (B,) int64 position of each image in its split (GLO looks up its codes with it).
    """

    image: Tensor
    label: Tensor
    index: Tensor
