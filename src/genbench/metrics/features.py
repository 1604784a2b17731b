"""Feature extractors for FID/KID/precision-recall, neighbours and path length: one description of a feature map
(:class:`FeatureExtractor`), batching, the Inception input format, and the Inception weights.

The Inception network is torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF-1.x-compatible port that
published FIDs use): it takes uint8 RGB (N, 3, H, W) in 0..255 and resizes to 299 itself with a bilinear
resizer that mimics TensorFlow 1.x. Its weights are never bundled; ``load_inception`` finds them through
genbench's one weight resolver (``genbench.weights``) or says exactly where to put them. torch-fidelity is
imported lazily because it pulls in torchvision and takes seconds to import.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from genbench.io import torch_save
from genbench.weights import WeightsFile, WeightsNotFound, hub_cache_dir, resolve_weights

if TYPE_CHECKING:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

log = logging.getLogger(__name__)

# torch-fidelity caches its download under this name (the last part of its URL); pytorch-fid ships the same
# converted weights (same hash suffix 6726825d) as pt_inception-..., so either name is accepted in the cache.
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
PYTORCH_FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_FEATURE = "2048"  # pool3 features, the ones FID and KID are defined on
INCEPTION_EXTRACTOR = "torch-fidelity inception-v3-compat pool3 (2048)"
INCEPTION_RESIZER = "torch-fidelity bilinear, TF1.x-compatible, to 299x299"
INCEPTION_CONFIG_NODE = "eval.inception"
WEIGHTS_CONFIG_KEY = f"{INCEPTION_CONFIG_NODE}.weights_path"
PIXELS_DESCRIPTION = "pixels: the C x H x W values in [0, 1]"


class InceptionWeightsUnavailable(WeightsNotFound):
    """The InceptionV3 weights are neither at the configured path nor in the torch hub cache, nor downloadable."""


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """A ready feature map and what a protocol record says about it: the one abstraction every evaluator that
    compares images in a feature space uses (generative metrics, neighbours, path length).

    ``extract``: images (N, C, H, W) in [0, 1] on the device -> features (N, F). ``name``: the metric suffix
    ("classifier", "inception", "pixels"). ``digest`` identifies the weights (part of every feature-cache key);
    None when the map cannot be identified, and its features are then never cached. ``scalars``: sampler-
    independent extras for metrics.json (the classifier's test accuracy).
    """

    name: str
    extract: Callable[[Tensor], Tensor]
    description: str  # the protocol's ``feature_extractor``
    resizer: str = "none"  # the protocol's ``resizer``
    digest: str | None = None
    scalars: dict[str, float] = dataclasses.field(default_factory=dict)

    def __call__(self, images: Tensor) -> Tensor:
        return self.extract(images)

    @property
    def cache_id(self) -> str | None:
        """``<name>:<digest>``, the ``extractor`` entry of feature-cache keys; None when not cacheable."""
        return None if self.digest is None else f"{self.name}:{self.digest}"


def pixel_features() -> FeatureExtractor:
    """The images themselves, flattened (N, C*H*W): the extractor that needs no weights."""
    return FeatureExtractor("pixels", _flatten, PIXELS_DESCRIPTION, digest="none")


def _flatten(images: Tensor) -> Tensor:
    return images.flatten(1)


@dataclasses.dataclass(frozen=True)
class MetricProtocol:
    """How a FID/KID value was measured; stored beside every value, because numbers from different protocols
    (sample counts, reference split, resizer, network) are not comparable."""

    n_gen: int
    n_ref: int
    reference_split: str
    resizer: str = INCEPTION_RESIZER
    feature_extractor: str = INCEPTION_EXTRACTOR

    def to_dict(self) -> dict[str, int | str]:
        return dataclasses.asdict(self)


def extract_features(
    extractor: Callable[[Tensor], Tensor],
    images: Tensor | Iterable[Tensor | tuple[Tensor, ...]],
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> Tensor:
    """Run ``extractor`` over ``images`` under ``torch.no_grad`` and return the features (N, F) on the CPU.

    ``images`` is one tensor (N, ...), split into ``batch_size`` chunks, or an iterable of batches (a
    DataLoader); a batch that is a tuple (``Batch``, ``(x, y)``) contributes its first field. Each batch is
    moved to ``device`` when given. Features come back on the CPU so 10k x 2048 sets don't hold GPU memory.
    """
    batches = images.split(batch_size) if isinstance(images, Tensor) else images
    out = []
    with torch.no_grad():
        for batch in batches:
            x = batch if isinstance(batch, Tensor) else batch[0]  # (B, C, H, W)
            if device is not None:
                x = x.to(device)
            out.append(extractor(x).cpu())  # (B, F)
    if not out:
        raise ValueError("no images to extract features from")
    return torch.cat(out)


def to_inception_input(images: Tensor) -> Tensor:
    """Float images (N, C, H, W) in [0, 1], C in {1, 3} -> uint8 (N, 3, H, W) in 0..255.

    Rounds like ``torchvision.utils.save_image`` (x * 255 + 0.5, floored), so features match those of the
    same images saved as PNG and scored from disk; grey images are tiled to three channels.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"need (N, 1 or 3, H, W) images, got {tuple(images.shape)}")
    x = (images.clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8)  # (N, C, H, W)
    return x.expand(-1, 3, -1, -1).contiguous()  # (N, 3, H, W)


def inception_cache_dir() -> Path:
    """Where torch-fidelity's ``load_state_dict_from_url`` keeps the weights: ``$TORCH_HOME/hub/checkpoints``."""
    return hub_cache_dir()


def inception_weights() -> WeightsFile:
    """The Inception weight file, for ``genbench.weights.resolve_weights``."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return WeightsFile(
        what="InceptionV3 (FID)",
        filename=INCEPTION_WEIGHTS_FILE,
        url=URL_INCEPTION_V3,
        config_node=INCEPTION_CONFIG_NODE,
        aliases=(PYTORCH_FID_WEIGHTS_FILE,),
        alternative="Without them the *_inception metrics are skipped.",
    )


def load_inception(
    weights_path: str | Path | None = None, download: bool = True
) -> FeatureExtractorInceptionV3:
    """torch-fidelity's InceptionV3 in eval mode, returning pool3 features (``INCEPTION_FEATURE``).

    Weights from ``genbench.weights.resolve_weights``: an explicit ``weights_path`` must exist; else the torch hub
    cache under either file name; else, if ``download``, torch-fidelity's release URL into that cache. Anything else
    raises ``InceptionWeightsUnavailable`` saying which file to put where.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        path = resolve_weights(inception_weights(), weights_path, download)
    except WeightsNotFound as exc:
        raise InceptionWeightsUnavailable(str(exc)) from exc
    log.info("loading InceptionV3 weights from %s", path)
    return FeatureExtractorInceptionV3(
        "inception-v3-compat", [INCEPTION_FEATURE], feature_extractor_weights_path=str(path)
    )


def inception_extractor(inception: FeatureExtractorInceptionV3) -> Callable[[Tensor], Tensor]:
    """Wrap ``inception`` as images (N, C, H, W) in [0, 1] -> pool3 features (N, 2048), for ``extract_features``."""

    def extract(images: Tensor) -> Tensor:
        device = next(inception.parameters()).device  # looked up per call: the module may have moved
        (features,) = inception(to_inception_input(images.to(device)))  # one requested feature -> 1-tuple
        return features  # (N, 2048)

    return extract


def write_random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """Save a state dict with the real InceptionV3 layout but random values, for ``load_inception(path)``.

    ``FeatureExtractorInceptionV3`` always loads weights in ``__init__`` and has no switch to skip it, so
    tests and smoke runs build the graph through a subclass whose ``load_state_dict`` is a no-op, save its
    random initialisation, and then load the real class from that file through the normal path. Features
    from it are meaningless (and nearly constant); use it for wiring and shapes only.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _GraphOnly(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # skip loading
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty_state = Path(tmp) / "empty.pt"
        torch.save({}, empty_state)  # __init__ torch.loads a file before the (skipped) load
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            graph = _GraphOnly(
                "inception-random", [INCEPTION_FEATURE], feature_extractor_weights_path=str(empty_state)
            )
    torch_save(graph.state_dict(), path)  # atomic: never a half file under the real weights' name
    return Path(path)
