"""Runs the configured evaluators at the end of training and every ``every_n_epochs`` epochs.

Each periodic evaluation is also a point of the run's learning curve (``curve`` in metrics.json): its epoch,
batches and images seen, the training loop's seconds so far (evaluation excluded) and its scalar values, so
quality can be read against compute. The curve is kept in checkpoints: a resumed run's curve is the whole run's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from genbench.evaluators.base import Collectives, EvalContext, Evaluator
from genbench.evaluators.distributed import is_sharded
from genbench.evaluators.samplers import sample_sources
from genbench.progress import format_seconds
from genbench.run.callbacks import Throughput, training_ends

log = logging.getLogger(__name__)


def run_evaluators(
    evaluators: dict[str, Evaluator],
    model,
    datamodule,
    run_dir: Path,
    device: torch.device,
    seed: int,
    final: bool,
    rank: int = 0,
    world_size: int = 1,
    collectives: Collectives | None = None,
    samplers: Sequence[str] = (),
) -> tuple[dict[str, Any], EvalContext]:
    """Run every evaluator under no_grad in eval mode; return (flat metrics + records, context with pictures).

    Under DDP call it on every rank: sharded evaluators run first, on every rank (they meet in collectives, so
    no rank waits in one while rank 0 draws pictures); the others run on rank 0 only. Results are rank 0's.
    ``samplers`` (final evaluations only) names samplers to fit to the model's codes after training; the
    evaluators that judge samples (``uses_samples``) run once more for each, keyed ``@<sampler>``.
    """
    ctx = EvalContext(
        model=model,
        datamodule=datamodule,
        run_dir=run_dir,
        device=device,
        seed=seed,
        final=final,
        rank=rank,
        world_size=world_size,
        collectives=collectives,
    )
    order = sorted(
        evaluators.items(), key=lambda item: not is_sharded(item[1])
    )  # stable: config order within
    was_training = model.training
    model.eval()
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}

    def run(pass_order: list[tuple[str, Evaluator]], suffix: str = "") -> None:
        for name, evaluator in pass_order:
            if rank != 0 and not is_sharded(evaluator):
                continue
            log.info("evaluating %s%s", name, suffix)
            started = time.perf_counter()
            results.update(evaluator(ctx))
            seconds[name + suffix] = time.perf_counter() - started
            log.info("evaluated %s%s in %s", name, suffix, format_seconds(seconds[name + suffix]))

    # forked RNG: evaluating (or not, or how often) never changes the noise training draws afterwards, so a run
    # resumed from an epoch-end checkpoint continues exactly as the uninterrupted one did
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            run(order)
            if final and samplers:
                sources, skipped = sample_sources(model, datamodule, samplers, seed)
                if skipped:
                    ctx.records.setdefault("skipped", {}).update(
                        {f"sampler {name}": why for name, why in skipped.items()}
                    )
                judging = [(n, e) for n, e in order if getattr(e, "uses_samples", False)]
                for source in sources[1:]:
                    seconds[f"fit_sampler@{source.name}"] = source.fit_seconds
                    ctx.source = source
                    run(judging, f"@{source.name}")
                ctx.source = None
    finally:
        model.train(was_training)
    if seconds:
        log.info(
            "evaluation took %s: %s",
            format_seconds(sum(seconds.values())),
            ", ".join(f"{name} {format_seconds(t)}" for name, t in seconds.items()),
        )
    results.update(ctx.records)
    if final and seconds:
        results["eval_seconds"] = {
            **seconds,
            "total": sum(seconds.values()),
        }  # metrics.json: what judging cost
    return results, ctx


def log_pictures(trainer: pl.Trainer, pictures: dict[str, torch.Tensor], step: int) -> None:
    """Send picture grids to the loggers that take images (TensorBoard, W&B)."""
    for logger in trainer.loggers:
        for name, grid in pictures.items():
            if hasattr(logger, "log_image"):  # W&B
                logger.log_image(key=f"pictures/{name}", images=[grid], step=step)
            elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoard
                logger.experiment.add_image(f"pictures/{name}", grid, step)


class Evaluation(pl.Callback):
    """Final (and periodic) evaluation. Under DDP sharded evaluators run on every rank, the others on global
    rank 0; final results land in rank 0's ``self.results``."""

    def __init__(
        self,
        evaluators: dict[str, Evaluator],
        run_dir: str | Path,
        seed: int = 0,
        every_n_epochs: int = 0,
        samplers: Sequence[str] = (),
        periodic_evaluators: Sequence[str] | None = None,
        periodic_at_end: bool = False,
    ) -> None:
        unknown = sorted(set(periodic_evaluators or ()) - set(evaluators))
        if unknown:
            raise ValueError(
                f"eval.periodic_evaluators names {unknown}, not among the evaluators {sorted(evaluators)}"
            )
        self.evaluators = evaluators
        # the periodic evaluations' evaluators (None: all of them) and whether the last epoch gets one too (a curve
        # whose last point is at the same small N as the others; the final evaluation follows at the full N)
        self.periodic = (
            evaluators if periodic_evaluators is None else {n: evaluators[n] for n in periodic_evaluators}
        )
        self.periodic_at_end = periodic_at_end
        self.curve: list[dict[str, Any]] = []
        self.curve_protocols: dict[str, Any] = {}
        self.samplers = list(samplers)
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.every_n_epochs = every_n_epochs
        self.results: dict[str, Any] = {}
        self.ran_final = False
        self._evaluated_epoch = -1  # in checkpoints: a resumed run does not repeat an epoch's evaluation

    def state_dict(self) -> dict[str, Any]:
        return {
            "evaluated_epoch": self._evaluated_epoch,
            "curve": self.curve,
            "curve_protocols": self.curve_protocols,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._evaluated_epoch = int(state_dict.get("evaluated_epoch", -1))
        self.curve = list(state_dict.get("curve", []))
        self.curve_protocols = dict(state_dict.get("curve_protocols", {}))

    def _run(self, trainer: pl.Trainer, pl_module, final: bool) -> dict[str, Any]:
        distributed = trainer.world_size > 1
        results, ctx = run_evaluators(
            self.evaluators if final else self.periodic,
            pl_module,
            trainer.datamodule,
            self.run_dir,
            pl_module.device,
            self.seed,
            final,
            trainer.global_rank,
            trainer.world_size,
            trainer.strategy if distributed else None,
            self.samplers,
        )
        if not trainer.is_global_zero:
            return {}
        scalars = {k: v for k, v in results.items() if isinstance(v, (int, float))}
        prefix = "eval" if final else "eval_periodic"
        for logger in trainer.loggers:
            logger.log_metrics({f"{prefix}/{k}": v for k, v in scalars.items()}, step=trainer.global_step)
        log_pictures(trainer, ctx.pictures, trainer.global_step)
        if not final:
            self._add_curve_point(trainer, scalars, results.get("protocols", {}))
        elif self.curve:
            results["curve"] = {"points": self.curve, "protocols": self.curve_protocols}
        return results

    def _add_curve_point(
        self, trainer: pl.Trainer, scalars: dict[str, float], protocols: dict[str, Any]
    ) -> None:
        """The periodic evaluation as a learning-curve point, against the training loop's own time and images."""
        throughput = next((c for c in trainer.callbacks if isinstance(c, Throughput)), None)
        self.curve.append(
            {
                "epoch": trainer.current_epoch + 1,
                "batches_seen": throughput.batches if throughput is not None else None,
                "images_seen": throughput.images if throughput is not None else None,
                "train_loop_seconds": throughput.loop_seconds if throughput is not None else None,
                "values": scalars,
            }
        )
        self.curve_protocols.update({k: v for k, v in protocols.items() if k in scalars})

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        last = training_ends(trainer)  # the final evaluation follows: no periodic one just before it
        if self.every_n_epochs and epoch % self.every_n_epochs == 0 and (self.periodic_at_end or not last):
            if trainer.current_epoch == self._evaluated_epoch:
                return
            self._run(trainer, pl_module, final=False)
            self._evaluated_epoch = trainer.current_epoch

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        self.results = self._run(trainer, pl_module, final=True)
        self.ran_final = True

    def run_final_if_skipped(self, trainer: pl.Trainer, pl_module) -> None:
        """The final evaluation of a run resumed from a checkpoint whose training was complete: Lightning then
        skips the training loop and its ``on_train_end`` hooks, so the evaluation runs here, after ``fit``."""
        if not self.ran_final:
            log.info("training was already complete in the checkpoint: running the final evaluation")
            self.on_train_end(trainer, pl_module)
