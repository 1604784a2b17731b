"""Start-up checks of the composed run config: a bad value fails at once, in one line, before anything is built.

``validate_config(cfg)`` runs on the composed, resolved config before the datamodule, model or trainer exist and
raises ``ConfigError`` naming the key, the bad value, the allowed range and a value to set instead, e.g.
``data.batch_size=0: must be an integer >= 1; set e.g. data.batch_size=64``. It refuses what would crash later (an
image size the conv nets cannot build), train forever (``trainer.max_epochs=-1`` without ``trainer.max_steps``) or
allocate absurd memory (``data.image_size=4096``). Command-line values arrive typed by Hydra: ``seed=abc`` is the
string 'abc', ``model.lr=nan`` a float. Booleans are not numbers here. Absent keys are not checked.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Iterator
from typing import Any, NoReturn

from omegaconf import DictConfig, ListConfig, OmegaConf

from genbench.codes import BIAS_CORRECTIONS, INITS, INVERSION_STARTS, OPTIMIZERS
from genbench.errors import UserError
from genbench.latent import PROJECTIONS
from genbench.losses import KERNELS
from genbench.nets.conv import base_grid
from genbench.nets.dcgan import OUTPUTS
from genbench.nets.mlp import OUTPUTS as FC_OUTPUTS
from genbench.run.paths import CONFIG_DIR

SEED_MAX = 2**32 - 1  # numpy's seed range; Lightning silently replaces a seed outside it by 0
IMAGE_SIZES = (8, 1024)  # beyond 1024 px the device-resident dataset and the nets outgrow any memory
LATENT_MAX = 65536
NATIVE_SIZES = "the digits dataset is 16px, MNIST and Fashion-MNIST 28, CelebA 64 or 128, frogs 64"
CONV_NETS = ("genbench.nets.conv.", "genbench.nets.dcgan.")
_ABSENT = object()


def _lightning_precisions() -> tuple[Any, ...]:
    try:
        from lightning_fabric.connector import _PRECISION_INPUT

        return tuple(v for arg in typing.get_args(_PRECISION_INPUT) for v in typing.get_args(arg))
    except ImportError:  # pragma: no cover - Lightning moved its private list: the one of Lightning 2.x
        return ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true",
                "bf16-mixed", "32-true", "64-true", "64", "32", "16", "bf16", 64, 32, 16)  # fmt: skip


PRECISIONS = _lightning_precisions()


class ConfigError(UserError, ValueError):
    """A config value is out of range. The message names the key, the value, the allowed range and the remedy."""


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (DictConfig, ListConfig)):
        return str(OmegaConf.to_container(value, resolve=True)).replace(" ", "")
    return repr(value) if isinstance(value, str) else str(value)


def _fail(key: str, value: Any, rule: str, example: Any) -> NoReturn:
    raise ConfigError(f"{key}={_show(value)}: must be {rule}; set e.g. {key}={_show(example)}")


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=_ABSENT)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(
    cfg: DictConfig,
    key: str,
    minimum: int = 0,
    maximum: int | None = None,
    *,
    optional: bool = False,
    example: Any = None,
    note: str = "",
) -> Any:
    """The int at ``key`` in [minimum, maximum] (or null when ``optional``); absent keys pass."""
    value = _get(cfg, key)
    if value is _ABSENT or (optional and value is None):
        return value
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        rule = (
            f"an integer >= {minimum}" if maximum is None else f"an integer between {minimum} and {maximum}"
        )
        _fail(
            key,
            value,
            rule + (" or null" if optional else "") + note,
            minimum if example is None else example,
        )
    return value


def _float(
    cfg: DictConfig,
    key: str,
    minimum: float = 0.0,
    maximum: float | None = None,
    *,
    strict: bool,
    example: Any,
    optional: bool = False,
) -> Any:
    """The finite number at ``key`` above ``minimum`` (``strict``) or at least it, and at most ``maximum``; null
    too when ``optional``."""
    value = _get(cfg, key)
    if value is _ABSENT or (optional and value is None):
        return value
    low_ok = _is_real(value) and (value > minimum if strict else value >= minimum)
    if not low_ok or (maximum is not None and value > maximum):
        rule = f"a finite number {'>' if strict else '>='} {minimum:g}" + (
            f" and <= {maximum:g}" if maximum is not None else ""
        )
        _fail(key, value, rule + (" or null" if optional else ""), example)
    return value


def _positive_float(cfg: DictConfig, key: str, example: Any = 1e-3) -> Any:
    return _float(cfg, key, strict=True, example=example)


def _choice(cfg: DictConfig, key: str, choices: typing.Iterable[Any], example: Any = None) -> None:
    value, choices = _get(cfg, key), tuple(choices)
    if value is not _ABSENT and (isinstance(value, (bool, float)) or value not in choices):
        _fail(key, value, "one of " + ", ".join(_show(c) for c in choices), example or choices[0])


def _bool(cfg: DictConfig, key: str, *, or_path: bool = False) -> None:
    value = _get(cfg, key)
    if value is _ABSENT or isinstance(value, bool) or (or_path and value is None):
        return
    if or_path and isinstance(value, str):
        return
    _fail(key, value, "true, false or a run directory" if or_path else "true or false", False)


def _walk(cfg: DictConfig, key: str) -> Iterator[tuple[str, str, Any]]:
    """(dotted key, last name, value) of every entry under ``key``, depth first."""
    node = _get(cfg, key)
    if not isinstance(node, DictConfig):
        return
    for name in node:
        full = f"{key}.{name}"
        value = _get(cfg, full)
        yield full, str(name), value
        yield from _walk(cfg, full)


# -- the checks ------------------------------------------------------------------------------------------------


def _check_by_name(cfg: DictConfig, node: str) -> None:
    """Every key under ``node`` recognised by its name, wherever it sits: model.sampler.lr, model.encoder.width."""
    for key, name, value in _walk(cfg, node):
        if name == "lr_decay_every" or name == "decay_every" or name == "epochs" or name.endswith("_epochs"):
            _int(cfg, key, 0, example=0 if name.endswith("every") else 1)
        elif name == "lr" or name.startswith("lr_") or name.endswith("_lr"):
            _positive_float(cfg, key, example=1e-3 if name != "lr_multiplier" else 0.1)
        elif name.endswith("_weight") or name in ("beta", "r1_gamma", "continuity_sigma", "jitter"):
            _float(cfg, key, strict=False, example=1.0)
        elif name == "decay":
            _positive_float(cfg, key, example=0.5)
        elif name == "init_std":  # null: 1 / sqrt(latent_dim)
            _float(cfg, key, strict=True, optional=True, example=1.0)
        elif name == "batch_size" or name.endswith("_batch_size"):
            _int(cfg, key, 1, example=64)
        elif name == "latent_dim":
            _int(cfg, key, 1, LATENT_MAX, example=64)
        elif name in ("n_codes", "resize"):
            _int(cfg, key, 1, optional=True, example=None)
        elif name == "inversion_steps":
            _int(cfg, key, 0, example=100)
        elif name == "kernel_size":
            _int(cfg, key, 3, example=4)
        elif name == "n_blocks":
            _int(cfg, key, 1, 5, example=5)
        elif name in ("num_layers", "hidden", "width", "base_width", "max_width", "noise_dim", "n_stages",
                      "n_clusters", "k_representatives", "pca_dim", "pca_images", "draws_per_code",
                      "inversion_candidates", "channels", "crop_size", "n_train"):  # fmt: skip
            _int(cfg, key, 1, example=64 if "width" in name else 1)
        elif name == "num_workers":
            _int(cfg, key, 0, example=0)
        elif name == "betas" and not (
            isinstance(value, ListConfig)
            and len(value) == 2
            and all(_is_real(b) and 0 <= b < 1 for b in value)
        ):
            _fail(key, value, "two numbers in [0, 1) (Adam's betas)", [0.9, 0.999])


def _check_model(cfg: DictConfig) -> None:
    _check_by_name(cfg, "model")
    fully_connected = str(_get(cfg, "model.generator._target_")).endswith(".FCGenerator")
    for name, choices in (
        ("init", INITS),
        ("projection", PROJECTIONS),
        ("optimizer", OPTIMIZERS),
        ("inversion_start", INVERSION_STARTS),
        ("code_bias_correction", BIAS_CORRECTIONS),
        ("divergence", ("kl", "mmd")),
        ("likelihood", ("bernoulli", "gaussian")),
        ("mmd_kernel", sorted(KERNELS)),
        ("generator.output", tuple(sorted(FC_OUTPUTS)) if fully_connected else OUTPUTS),
    ):
        _choice(cfg, f"model.{name}", choices)
    beta = _get(cfg, "model.w_avg_beta")
    if beta is not _ABSENT and not (_is_real(beta) and 0 <= beta < 1):
        _fail("model.w_avg_beta", beta, "a number in [0, 1)", 0.995)
    if _get(cfg, "model.truncation_psi") is not None:
        _float(cfg, "model.truncation_psi", 0.0, 1.0, strict=False, example=0.7)


def _check_image_size(cfg: DictConfig) -> None:
    low, high = IMAGE_SIZES
    size = _int(cfg, "data.image_size", low, high, example=16, note=f" ({NATIVE_SIZES})")
    if size is _ABSENT:
        return
    for key, name, value in _walk(cfg, "model"):
        if name == "_target_" and str(value).startswith(CONV_NETS) and not _conv_size(size):
            allowed = ", ".join(str(s) for s in range(low, high + 1) if _conv_size(s))
            net = key.removesuffix("._target_")
            _fail("data.image_size", size, f"4 or 7 times a power of two for {net} ({value}): {allowed}", 16)


def _conv_size(size: int) -> bool:
    try:
        base_grid(size)
    except ValueError:
        return False
    return True


def _check_trainer(cfg: DictConfig) -> None:
    # genbench's trainer.max_steps counts batches (genbench.run.callbacks.BatchLimit), not optimiser steps
    max_steps = _get(cfg, "trainer.max_steps")
    if max_steps is not _ABSENT and not (_is_int(max_steps) and (max_steps == -1 or max_steps >= 1)):
        _fail("trainer.max_steps", max_steps, "-1 (no batch limit) or a number of batches >= 1", 2000)
    bounded = _is_int(max_steps) and max_steps >= 1
    max_epochs = _get(cfg, "trainer.max_epochs")
    unbounded = max_epochs is None or (_is_int(max_epochs) and max_epochs == -1)
    if max_epochs is not _ABSENT and not (unbounded and bounded):
        _int(
            cfg,
            "trainer.max_epochs",
            1,
            example=5,
            note=" (-1, no epoch limit: only with a batch limit, trainer.max_steps >= 1)",
        )
    devices = _get(cfg, "trainer.devices")
    indices = (
        isinstance(devices, ListConfig) and len(devices) > 0 and all(_is_int(d) and d >= 0 for d in devices)
    )
    if devices is not _ABSENT and devices != "auto" and not indices:
        _int(cfg, "trainer.devices", 1, example=1, note=", 'auto' or a list of device indices")
    _int(cfg, "trainer.num_nodes", 1, example=1)
    _int(cfg, "trainer.log_every_n_steps", 1, example=50)
    _int(cfg, "trainer.check_val_every_n_epoch", 1, optional=True, example=1)
    _choice(cfg, "trainer.precision", PRECISIONS, example="32-true")
    clip = _get(cfg, "trainer.gradient_clip_val")
    if clip is not None:
        _float(cfg, "trainer.gradient_clip_val", strict=False, example=1.0)
    limit = _get(cfg, "trainer.limit_val_batches")
    if (
        limit is not _ABSENT
        and not (_is_int(limit) and limit >= 0)
        and not (_is_real(limit) and 0 <= limit <= 1)
    ):
        _fail("trainer.limit_val_batches", limit, "a fraction in [0, 1] or a number of batches >= 0", 1.0)


def _check_samplers(cfg: DictConfig) -> None:
    """``eval.samplers``: names of conf/model/sampler/*.yaml (or prior), refused before training, not after it."""
    names = _get(cfg, "eval.samplers")
    if names in (_ABSENT, None):
        return
    known = sorted(p.stem for p in (CONFIG_DIR / "model" / "sampler").glob("*.yaml"))
    choices = ", ".join(["prior", *known])
    if not isinstance(names, ListConfig | list) or not all(isinstance(n, str) for n in names):
        _fail("eval.samplers", names, f"a list of sampler names ({choices})", ["gaussian", "gmm"])
    unknown = [n for n in names if n != "prior" and n not in known]
    if unknown:
        _fail("eval.samplers", list(names), f"a list of sampler names ({choices})", ["gaussian", "gmm"])


def _check_periodic(cfg: DictConfig) -> None:
    """``eval.periodic_evaluators``: null (all) or names of configured ``eval.evaluators``; ``periodic_at_end``."""
    _bool(cfg, "eval.periodic_at_end")
    names = _get(cfg, "eval.periodic_evaluators")
    if names in (_ABSENT, None):
        return
    evaluators = _get(cfg, "eval.evaluators")
    known = (
        sorted(k for k, v in evaluators.items() if v is not None)
        if isinstance(evaluators, DictConfig)
        else []
    )
    if (
        not isinstance(names, ListConfig | list)
        or not all(isinstance(n, str) for n in names)
        or any(n not in known for n in names)
    ):
        _fail(
            "eval.periodic_evaluators",
            list(names) if isinstance(names, ListConfig) else names,
            f"null (all) or a list of eval.evaluators names ({', '.join(known)})",
            ["fid_classifier"],
        )


def validate_config(cfg: DictConfig) -> None:
    """Refuse a composed run config with an out-of-range value (``ConfigError``), before anything is built."""
    _int(cfg, "seed", 0, SEED_MAX, example=0)
    _check_image_size(cfg)
    _check_by_name(cfg, "data")
    _int(cfg, "eval.every_n_epochs", 0, example=0, note=" (0: evaluate only at the end)")
    _check_by_name(cfg, "eval")  # before the model, whose inversion_steps is ${eval.inversion_steps}
    _check_samplers(cfg)
    _check_periodic(cfg)
    _check_model(cfg)
    _check_trainer(cfg)
    if _get(cfg, "checkpoint") not in (_ABSENT, None):
        _positive_float(cfg, "checkpoint.every_minutes", example=10)
        _int(cfg, "checkpoint.every_n_steps", 0, example=0, note=" (0: no step checkpoints)")
    _int(cfg, "divergence.check_every_n_steps", 1, example=50)
    _bool(cfg, "resume", or_path=True)
    for key in ("compile", "print_config", "slurm_auto_requeue"):
        _bool(cfg, key)
    ckpt = _get(cfg, "ckpt_path")
    if ckpt not in (_ABSENT, None) and not (isinstance(ckpt, str) and ckpt.strip()):
        _fail("ckpt_path", ckpt, "null or the path of a .ckpt file", "<run>/checkpoints/last.ckpt")


__all__ = ["ConfigError", "validate_config"]
