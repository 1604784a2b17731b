"""Evaluators: each turns (model, data) into metrics and pictures, through the model contract only.

The Lightning callback (`genbench.callbacks.evaluation`) and `python -m genbench.evaluate` both run them.
"""

from genbench.evaluators.base import EvalContext, Evaluator

__all__ = ["EvalContext", "Evaluator"]
