"""The benchmark run: every (model, image size) cell, the model-independent cells of each size, GLANN's estimate.

Every cell is guarded: a model that fails to build (a config being written) or a switch a model does not support
is recorded under ``skipped`` with its reason, and the other cells keep their numbers.
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from genbench.bench import configs, training
from genbench.bench.eval_protocol import bench_eval_protocol
from genbench.bench.evaluation import fid_against_torch_fidelity, inception_throughput, sampling_throughput
from genbench.bench.timing import step_stats

log = logging.getLogger(__name__)

TARGETS = {
    "lightning_over_plain_max": 1.10,  # step-time ratio, every model, batch 128, CPU
    "resident_over_dataloader_min": 2.0,  # speed-up, MLP-ALAE and VAE on MNIST: the data path and these cells
    "resident_over_dataloader_cells": [["alae", 28], ["vae", 28]],
    "fid_over_torch_fidelity_max": 1.10,  # time ratio, same images and extractor
}
GLANN_EXPERIMENT = "glann_mnist_glo"
MNIST_TRAIN_SIZE = 60000


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".split("\n")[0][:300]


def attempt(fn: Callable[[], Any], notes: list[dict[str, Any]], **where: Any) -> Any:
    """``fn()``, or ``{"skipped": reason}`` with a note: one failing cell (a model being written, a switch a model
    does not support) must not cost the other cells their numbers."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the reason is recorded in bench.json and printed
        log.warning("skipped %s: %s", where, _error(exc))
        notes.append({**where, "reason": _error(exc)})
        return {"skipped": _error(exc)}


def _ratio(numerator: dict[str, Any], denominator: dict[str, Any]) -> float | None:
    """Ratio of median step times, None where either side was skipped."""
    if "step_ms_median" in numerator and "step_ms_median" in denominator:
        return numerator["step_ms_median"] / denominator["step_ms_median"]
    return None


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_model(
    name: str,
    size: int,
    args: argparse.Namespace,
    device: torch.device,
    tmp: Path,
    notes: list[dict[str, Any]],
) -> dict[str, Any]:
    """Every measurement of one (model, image size) cell. Raises if the model cannot even be built."""
    where = {"model": name, "size": size}
    cfg = configs.compose_run(
        configs.bench_overrides(name, size, args.batch_size, args.data_root), tmp / f"{name}-{size}"
    )
    n_train = None if args.data_root else (args.warmup + args.steps) * args.batch_size
    resident = configs.build_datamodule(cfg, True, n_train, tmp / "cache")
    model = configs.build_model(cfg)
    record: dict[str, Any] = {
        "model": name,
        "size": size,
        "shape": [cfg.data.channels, size, size],
        "batch_size": args.batch_size,
        "model_class": type(model).__name__,
        "automatic_optimization": model.automatic_optimization,
    }
    # Lightning first: its fit runs the model's setup (GLO sizes and initialises its codes, incremental GLO splits
    # its curriculum). The plain loop then drives the same model object with fresh optimisers, its weights reset to
    # those the fit started from. Repeats alternate, so a neighbour's burst hits both paths.
    stats, start_state = training.lightning_fit(cfg, model, resident, device, args.warmup, args.steps)
    lightning_runs, plain_runs = [stats], []
    run_plain = functools.partial(
        training.plain_loop, model, resident.split("train"), device, args.batch_size, args.warmup, args.steps
    )
    for repeat in range(args.repeats):
        if repeat:
            lightning_runs.append(
                training.lightning_fit(cfg, model, resident, device, args.warmup, args.steps)[0]
            )
        if plain_runs and "skipped" in plain_runs[-1]:
            plain_runs.append(plain_runs[-1])  # it failed once: do not try (and note) it again
            continue
        if start_state is not None:
            model.load_state_dict(start_state)
        plain_runs.append(attempt(run_plain, notes, **where, stage="plain"))
    record["lightning"] = _pooled(lightning_runs, args.batch_size)
    record["plain"] = _pooled(plain_runs, args.batch_size)
    record["lightning_over_plain"] = _ratio(record["lightning"], record["plain"])
    # Each repeat's Lightning and plain runs are neighbours in time: their ratio cancels slow drifts in load.
    record["lightning_over_plain_per_repeat"] = [
        _ratio(light, plain) for light, plain in zip(lightning_runs, plain_runs, strict=True)
    ]
    _free(device)

    def dataloader_fit() -> dict[str, Any]:
        classic = configs.build_datamodule(cfg, False, n_train, tmp / "cache")
        return training.lightning_fit(
            cfg, configs.build_model(cfg), classic, device, args.warmup, args.steps
        )[0]

    record["dataloader"] = attempt(dataloader_fit, notes, **where, stage="dataloader")
    record["resident_over_dataloader"] = _ratio(record["dataloader"], record["lightning"])
    _free(device)
    eval_batch = int(cfg.data.eval_batch_size)
    record["sampling"] = attempt(
        lambda: sampling_throughput(model, args.eval_samples, eval_batch, device),
        notes,
        **where,
        stage="sampling",
    )
    if args.gpu_variants:
        record["gpu_variants"] = {"fp32": record["lightning"]}
        for variant in args.gpu_variants:
            fit = functools.partial(_gpu_variant, cfg, resident, device, args, training.GPU_VARIANTS[variant])
            record["gpu_variants"][variant] = attempt(fit, notes, **where, stage=variant)
            _free(device)
    return record


def _gpu_variant(cfg, datamodule, device: torch.device, args: argparse.Namespace, switches: dict[str, Any]):
    """One GPU switch setting on a fresh model (compilation happens in the warm-up steps)."""
    model = configs.build_model(cfg)
    compiles = switches.get("compile_model") or switches.get("compile_nets")
    if compiles and model.compile_unsupported:
        raise ValueError(f"{type(model).__name__} cannot be compiled: {model.compile_unsupported}")
    return training.lightning_fit(cfg, model, datamodule, device, args.warmup, args.steps, **switches)[0]


def _pooled(runs: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
    """Several alternated runs of one path as one: the median over all their timed steps, the worst peak memory.
    The first run's reason when none succeeded."""
    good = [r for r in runs if "step_ms" in r]
    if not good:
        return runs[0]
    pooled = step_stats([t / 1e3 for r in good for t in r["step_ms"]], batch_size)
    memory = max((r["memory"] for r in good), key=lambda m: m["peak_mib"])
    return {**pooled, "repeat_step_ms_medians": [r["step_ms_median"] for r in good], "memory": memory}


def bench_size(
    size: int, args: argparse.Namespace, device: torch.device, tmp: Path, notes: list[dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model-independent cells of one image size: the data path alone, features and FID."""
    cfg = configs.compose_run(
        configs.bench_overrides(None, size, args.batch_size, args.data_root), tmp / f"data-{size}"
    )
    n_train = None if args.data_root else max((args.warmup + args.steps) * args.batch_size, args.eval_samples)
    where = {"size": size}

    def one(resident: bool) -> dict[str, Any]:
        datamodule = configs.build_datamodule(cfg, resident, n_train, tmp / "cache")
        return training.data_path(datamodule, device, args.warmup, args.steps)

    data = {"size": size, "shape": [cfg.data.channels, size, size], "batch_size": args.batch_size}
    data["resident"] = attempt(lambda: one(True), notes, **where, stage="data_path_resident")
    data["dataloader"] = attempt(lambda: one(False), notes, **where, stage="data_path_dataloader")
    data["resident_over_dataloader"] = _ratio(data["dataloader"], data["resident"])

    def fid() -> dict[str, Any]:
        datamodule = configs.build_datamodule(cfg, True, n_train, tmp / "cache")
        n = min(args.eval_samples, len(datamodule.split("train")))
        reals = datamodule.images("train", torch.arange(n), device)  # (n, C, H, W) in [0, 1]
        fakes = reals.flip(-1) * 0.8  # content does not matter for speed; a different set keeps FID > 0
        out = fid_against_torch_fidelity(
            reals, fakes, device, int(cfg.data.eval_batch_size), args.eval_repeats
        )
        n_inception = n if device.type == "cuda" else min(n, 64)  # Inception runs at 299 px: slow on a CPU
        out["inception"] = inception_throughput(reals[:n_inception], device, int(cfg.data.eval_batch_size))
        return out

    evaluation = {"size": size, **attempt(fid, notes, **where, stage="fid")}
    return data, evaluation


def bench_glann(args: argparse.Namespace, device: torch.device, tmp: Path) -> dict[str, Any]:
    root = [f"data.root={args.data_root}"] if args.data_root else []
    cfg = configs.compose_run([f"experiment={GLANN_EXPERIMENT}", "eval=none", *root], tmp / "glann")
    datamodule = configs.build_datamodule(
        cfg, True, None if args.data_root else MNIST_TRAIN_SIZE, tmp / "cache"
    )
    stats = training.glann_estimate(
        cfg, configs.build_model(cfg), datamodule, device, args.warmup, args.steps
    )
    return {"experiment": GLANN_EXPERIMENT, "device": str(device), **stats}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark for parsed options (``genbench.bench.cli``); returns what bench.json holds."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.models = args.models or configs.model_names()
    if args.gpu_variants is None:  # every switch on a GPU; on a CPU only those asked for (compiling is slow)
        args.gpu_variants = list(training.GPU_VARIANTS) if device.type == "cuda" else []
    unknown = [v for v in args.gpu_variants if v not in training.GPU_VARIANTS]
    if unknown:
        raise SystemExit(f"unknown --gpu-variants {unknown}; choose from {list(training.GPU_VARIANTS)}")
    load = _load_average()
    if device.type == "cpu" and load and load[0] > (os.cpu_count() or 1):
        log.warning(
            "the CPU is contended (load %.1f on %d cores): multi-threaded ops wait for a free core at every parallel "
            "region, so numbers are noisy and slow; --threads 1 gives steadier ones",
            load[0],
            os.cpu_count(),
        )
    started = time.time()
    notes: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "meta": _meta(args, device),
        "targets": TARGETS,
        "training": [],
        "data_path": [],
        "evaluation": [],
        "glann_mnist_glo": None,
        "skipped": notes,
    }
    with tempfile.TemporaryDirectory(prefix="genbench-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for size in args.sizes:
            for name in args.models:
                log.info("benchmarking %s at %d px", name, size)
                cell = attempt(
                    lambda n=name, s=size: bench_model(n, s, args, device, tmp, notes),
                    notes,
                    model=name,
                    size=size,
                    stage="build/fit",
                )
                if "skipped" not in cell:
                    result["training"].append(cell)
                _free(device)
            data, evaluation = bench_size(size, args, device, tmp, notes)
            result["data_path"].append(data)
            result["evaluation"].append(evaluation)
        if getattr(args, "eval_protocol", False):
            root = args.data_root or os.environ.get("GENBENCH_DATA")
            if root is None:
                notes.append(
                    {"stage": "eval_protocol", "error": "needs --data-root or GENBENCH_DATA (real MNIST)"}
                )
            else:
                result["eval_protocol"] = attempt(
                    lambda: bench_eval_protocol(root, tmp), notes, stage="eval_protocol"
                )
        if args.glann and "glo" in args.models:
            result["glann_mnist_glo"] = attempt(lambda: bench_glann(args, device, tmp), notes, stage="glann")
    result["meta"]["seconds"] = time.time() - started
    result["meta"]["load_average_end"] = _load_average()
    return result


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _meta(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from genbench.run.provenance import git_commit, library_versions

    return {
        "device": str(device),
        "device_name": _device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": _load_average(),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "eval_samples": args.eval_samples,
        "data": args.data_root or "synthetic uint8 images",
        "models": args.models,
        "sizes": args.sizes,
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": library_versions(),
        "git_commit": git_commit(),
    }
