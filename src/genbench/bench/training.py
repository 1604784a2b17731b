"""Training throughput: genbench's Lightning path, a plain PyTorch loop of the same model, and the data path.

The plain loop drives the model's own ``training_step`` (the same loss code, optimisers and batch), so the ratio
of the two is what Lightning's loop costs and nothing else. Inside ``training_step`` a LightningModule asks its
host for three things: ``self.optimizers()``, ``self.manual_backward`` and ``self.log``. Outside a Trainer,
Lightning's one supported host is Fabric; ``_PlainHost`` stands in for it with plain PyTorch (``loss.backward()``,
logging dropped, the raw torch optimisers), so manual-optimisation models (GLO, ALAE) run in the plain loop too.
Automatic-optimisation models get ``zero_grad / backward / step`` from the loop, as Lightning would do.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
from omegaconf import DictConfig

from genbench.bench.timing import PeakMemory, StepClock, StepTimer, StopFit, step_stats
from genbench.data import Batch, ImageArrays, ImageDataModule
from genbench.interface import GenerativeModel
from genbench.run.callbacks import Throughput

log = logging.getLogger(__name__)


def accelerator(device: torch.device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


class ChannelsLast(pl.Callback):
    """Weights of 4-D tensors in channels_last (NHWC) before the first step: convolutions then run NHWC."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.to(memory_format=torch.channels_last)


def lightning_fit(
    cfg: DictConfig,
    model: GenerativeModel,
    datamodule: ImageDataModule,
    device: torch.device,
    warmup: int,
    steps: int,
    precision: str | None = None,
    channels_last: bool = False,
    compile_model: bool = False,
    compile_nets: bool = False,
    stop: bool = False,
) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """``warmup + steps`` batches of a real ``pl.Trainer`` fit built from ``cfg.trainer`` and ``cfg.logger`` (the
    per-step parts of ``genbench.train``: the Throughput callback and the loggers; no checkpoints, validation or
    evaluation). Returns the step statistics with peak memory, and the weights the fit started from.

    ``compile_model`` is genbench's ``compile=true`` switch, ``torch.compile(model)``: Lightning then runs
    ``training_step`` through dynamo, with a graph break at every ``self.log``. ``compile_nets`` compiles each child
    network in place instead, so only the networks' forward passes are compiled.
    """
    timer = StepTimer(device, warmup, steps, stop=stop)
    loggers = [hydra.utils.instantiate(spec) for spec in cfg.logger.values()] if cfg.logger else False
    overrides: dict[str, Any] = dict(
        accelerator=accelerator(device),
        devices=1,
        strategy="auto",
        max_epochs=1,
        max_steps=-1,
        limit_train_batches=warmup + steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=loggers,
        callbacks=[Throughput(), timer, *([ChannelsLast()] if channels_last else [])],
    )
    if precision is not None:
        overrides["precision"] = precision
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, **overrides)
    if compile_nets:
        for net in model.children():
            net.compile()
    fit_model = torch.compile(model) if compile_model else model
    with PeakMemory(device) as memory:
        try:
            trainer.fit(fit_model, datamodule=datamodule)
        except StopFit:
            pass  # the timed steps are done; the end-of-training work is deliberately not run
    intervals = timer.clock.intervals()[:steps]
    return {**step_stats(intervals, datamodule.batch_size), "memory": memory.result}, timer.initial_state


class _PlainHost:
    """What a LightningModule asks of its host inside ``training_step``, as plain PyTorch (see the module doc).

    ``model.trainer.<anything>`` raises, so a model whose step reads the trainer fails the plain loop loudly.
    """

    def backward(self, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        tensor.backward(*args, **kwargs)

    def log_dict(self, metrics: dict[str, Any], step: int | None = None) -> None:
        return None


def configured_optimizers(configured: Any) -> list[torch.optim.Optimizer]:
    """The torch optimisers out of any ``configure_optimizers`` return value Lightning accepts."""
    if isinstance(configured, torch.optim.Optimizer):
        return [configured]
    if isinstance(configured, dict):
        return [configured["optimizer"]]
    if isinstance(configured, (list, tuple)):
        if len(configured) == 2 and isinstance(configured[0], (list, tuple)):  # ([optimizers], [schedulers])
            return configured_optimizers(list(configured[0]))
        return [opt for item in configured for opt in configured_optimizers(item)]
    raise TypeError(f"cannot read optimisers from configure_optimizers() -> {type(configured).__name__}")


def plain_loop(
    model: GenerativeModel,
    arrays: ImageArrays,
    device: torch.device,
    batch_size: int,
    warmup: int,
    steps: int,
    seed: int = 0,
) -> dict[str, Any]:
    """``warmup + steps`` steps of a hand-written loop: index a device-resident uint8 tensor, call ``training_step``
    and, for automatic optimisation, zero_grad / backward / step. Returns step statistics with peak memory."""
    total = warmup + steps
    if total * batch_size > len(arrays):
        raise ValueError(
            f"{total} batches of {batch_size} need {total * batch_size} images, have {len(arrays)}"
        )
    # A model that went through a fit: its step must not reach that finished Trainer.
    attached, model.trainer = model._trainer, None
    model.to(device).train()
    optimizers = configured_optimizers(model.configure_optimizers())
    host = _PlainHost()
    model.fabric = host  # Lightning keeps a weak proxy: `host` must outlive the loop
    model._fabric_optimizers = optimizers  # what LightningModule.optimizers() returns under Fabric
    order = torch.randperm(len(arrays), generator=torch.Generator().manual_seed(seed))[: total * batch_size]
    clock = StepClock(device)
    try:
        with PeakMemory(device) as memory:
            images, labels = arrays.images.to(device), arrays.labels.to(device)  # (N, C, H, W) uint8, (N,)
            order = order.to(device)  # one copy, none per step
            for i in range(total):
                index = order[i * batch_size : (i + 1) * batch_size]  # (B,)
                batch = Batch(images[index].float().div_(255.0), labels[index], index)
                out = model.training_step(batch, i)
                if model.automatic_optimization and out is not None:
                    loss = out["loss"] if isinstance(out, dict) else out
                    for opt in optimizers:
                        opt.zero_grad(set_to_none=True)
                    loss.backward()
                    for opt in optimizers:
                        opt.step()
                if i + 1 >= warmup:
                    clock.tick()
    finally:
        model.fabric = None
        model._fabric_optimizers = []
        model.trainer = attached
    return {**step_stats(clock.intervals(), batch_size), "memory": memory.result}


def data_path(datamodule: ImageDataModule, device: torch.device, warmup: int, steps: int) -> dict[str, Any]:
    """The data path alone: iterate the train loader, move each batch to the device as Lightning does, run
    ``on_after_batch_transfer``. An idle Trainer is attached so the datamodule serves the train split on ``device``
    exactly as inside a fit (it reads the device, rank and stage from its trainer)."""
    idle = pl.Trainer(
        accelerator=accelerator(device),
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    idle.training = True
    datamodule.trainer = idle
    clock = StepClock(device)
    try:
        with PeakMemory(device) as memory:
            for i, raw in enumerate(datamodule.train_dataloader()):
                datamodule.on_after_batch_transfer(move_data_to_device(raw, device), 0)
                if i + 1 >= warmup:
                    clock.tick()
                if i + 1 >= warmup + steps:
                    break
    finally:
        datamodule.trainer = None
    return {**step_stats(clock.intervals(), datamodule.batch_size), "memory": memory.result}


# The GPU switches, each on a fresh model: name -> lightning_fit keyword arguments. "fp32" is the main run.
GPU_VARIANTS: dict[str, dict[str, Any]] = {
    "bf16": {"precision": "bf16-mixed"},
    "channels_last": {"channels_last": True},
    "compile_model": {"compile_model": True},
    "compile_nets": {"compile_nets": True},
    "bf16+channels_last+compile_nets": {
        "precision": "bf16-mixed",
        "channels_last": True,
        "compile_nets": True,
    },
}


def glann_estimate(
    cfg: DictConfig,
    model: GenerativeModel,
    datamodule: ImageDataModule,
    device: torch.device,
    warmup: int,
    steps: int,
) -> dict[str, Any]:
    """Wall-clock of GLANN's MNIST GLO setting (conf/experiment/glann_mnist_glo.yaml) from the median step time:
    epochs x batches per epoch x step. Excludes validation, BN recalibration and the IMLE sampler fit."""
    stats, _ = lightning_fit(cfg, model, datamodule, device, warmup, steps, stop=True)
    epochs = int(cfg.trainer.max_epochs)
    batches = len(datamodule.split("train")) // datamodule.batch_size
    epoch_s = batches * stats["step_ms_median"] / 1e3
    return {
        **stats,
        "epochs": epochs,
        "batches_per_epoch": batches,
        "epoch_seconds_estimate": epoch_s,
        "total_hours_estimate": epochs * epoch_s / 3600,
        "excludes": "validation, batch-norm recalibration and the IMLE sampler fit at the end",
    }
