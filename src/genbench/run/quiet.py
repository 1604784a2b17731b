"""Warnings and notices that do not apply to genbench runs, silenced once at start-up (each says why).

The first run on a fresh machine printed 58 lines before its first epoch; these four were noise there:
- "You passed in a `val_dataloader` but have no `validation_step`": the datamodule serves the test split to every
  model (VAEs validate on it); models without a validation step (GLO, ALAE) skip it, as intended.
- "`isinstance(treespec, LeafSpec)` is deprecated": Lightning 2.6 calling a torch API that torch 2.14 deprecates.
- "The number of training batches (...) is smaller than the logging interval": genbench also logs at each
  epoch's end (``GenerativeModel.log_train_step``), so small datasets still get their rows.
- Lightning's "Tip:" advertisement for a hosted logger.
"""

from __future__ import annotations

import logging
import warnings

_MESSAGES = (
    r"You passed in a `val_dataloader` but have no `validation_step`",
    r".*isinstance\(treespec, LeafSpec\)",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def silence_inapplicable_warnings() -> None:
    for message in _MESSAGES:
        warnings.filterwarnings("ignore", message=message)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
