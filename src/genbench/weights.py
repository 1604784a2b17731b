"""genbench's one resolver for pretrained weight files (InceptionV3 for FID, ImageNet ResNet-50 / VGG16).

Every network genbench does not train itself finds its weights the same way, and says the same one line when they
are missing:

1. ``weights_path`` when configured: it must exist (a configured path that is missing is an error, never a reason
   to look elsewhere);
2. else torch's hub cache, ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``, where torchvision
   and torch-fidelity store their downloads), under the file's name or one of its aliases;
3. else, when ``download`` is on, the file's URL into that cache (atomically: a broken download never leaves half
   a file under the real name);
4. else :class:`WeightsNotFound`: one line naming the file, where to put it, the config key that points at it and
   the weight-free alternative.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from genbench.errors import UserError
from genbench.io import atomic_path

log = logging.getLogger(__name__)


class WeightsNotFound(UserError, FileNotFoundError):
    """Pretrained weights are missing. The message names the file, where to put it and the alternative."""


@dataclass(frozen=True)
class WeightsFile:
    """A pretrained weight file and the config node that configures it (``<node>.weights_path``, ``<node>.download``).

    ``aliases``: other names the same file goes by in the cache (pytorch-fid's copy of the Inception weights).
    ``alternative``: what to do without the weights, appended to every error.
    """

    what: str  # e.g. "InceptionV3 (FID)"
    filename: str
    url: str
    config_node: str  # e.g. "eval.inception"
    aliases: tuple[str, ...] = ()
    alternative: str = ""

    @property
    def path_key(self) -> str:
        return f"{self.config_node}.weights_path"


def hub_cache_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints``: where torchvision's and torch-fidelity's downloads live."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(spec: WeightsFile, weights_path: str | Path | None, download: bool) -> Path:
    """The local file holding ``spec``'s weights (see the module docstring for the order), or ``WeightsNotFound``."""
    cache = hub_cache_dir()
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsNotFound(
                _message(
                    spec,
                    f"{spec.path_key}={path}: no such file. Put {_named(spec)} there, or set "
                    f"{spec.path_key}=null to use the cache {cache}/.",
                )
            )
        return path
    for name in (spec.filename, *spec.aliases):
        if (cache / name).is_file():
            return cache / name
    cached = cache / spec.filename
    where = f"Put {_named(spec)} in {cache}/ or set {spec.path_key}=/path/to/{spec.filename}"
    if not download:
        raise WeightsNotFound(
            _message(
                spec,
                f"{spec.what} weights not found: {cached}. {where}, or {spec.config_node}.download=true where the "
                "network allows.",
            )
        )
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp:
            torch.hub.download_url_to_file(spec.url, str(tmp), progress=False)
    except OSError as exc:  # URLError is an OSError: no network, DNS failure, refused, read-only cache
        raise WeightsNotFound(
            _message(spec, f"could not download {spec.url} to {cached} ({exc}). {where}.")
        ) from exc
    log.info("downloaded %s weights to %s", spec.what, cached)
    return cached


def _named(spec: WeightsFile) -> str:
    same = "".join(f", or {alias}" for alias in spec.aliases)
    return f"{spec.filename}{same} (from {spec.url})"


def _message(spec: WeightsFile, text: str) -> str:
    return f"{text} {spec.alternative}".strip()


__all__ = ["WeightsFile", "WeightsNotFound", "hub_cache_dir", "resolve_weights"]
