"""Frozen feature networks: ResNet-50 pooled features and VGG16 block features (ImageNet), and plain pixels.

Incremental GLO (Helman, Zingerman & Schreiber, 2019) clusters the training images on ResNet-50 features (the
2048-d output of the last pooling layer) and trains with a perceptual loss on VGG16 features (the end of each
block, relu1_2 ... relu5_3). ``PixelFeatures`` has the same interface and needs no weights (the offline setting).

- Weights: found by ``genbench.weights.resolve_weights`` (genbench's one resolver): ``weights_path`` when given;
  else torchvision's cache, ``torch.hub.get_dir()/checkpoints/<file>``, downloaded there only with
  ``download=True``. A missing file fails at construction, i.e. at start-up, with ``WeightsNotFound`` naming the
  file, where to put it, and the weight-free alternative.
- Frozen: ``freeze`` turns the weights into non-persistent buffers. They move with the model that holds the net,
  never get gradients or optimiser state, and are never written to its checkpoints (they come from the file).
  The nets stay in eval mode whatever the model's mode.
- Input: images (N, C, H, W) in [0, 1]; grey images are repeated to RGB; ImageNet mean/std normalisation;
  optional bilinear resize to ``resize`` pixels (224 = the ImageNet training size).
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from genbench.weights import WeightsFile, WeightsNotFound, resolve_weights

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Ends of VGG16's five blocks in ``vgg16().features``: the ReLU before each max-pool (relu1_2 ... relu5_3).
VGG16_BLOCK_ENDS = (4, 9, 16, 23, 30)
PRETRAINED_FALLBACK = (
    "Without pretrained weights choose model/features=pixels and model/image_loss=pixel: the run then records "
    "that it did not use the report's setting."
)


def freeze(module: nn.Module) -> nn.Module:
    """Turn every parameter and buffer of ``module`` into a non-persistent buffer, in place, and set eval mode."""
    for sub in module.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            del sub._parameters[name]
            sub.register_buffer(name, param.detach(), persistent=False)
        for name, buffer in list(sub.named_buffers(recurse=False)):  # batch-norm statistics
            sub.register_buffer(name, buffer, persistent=False)
    return module.eval()


def imagenet_weights(
    weights: torchvision.models.WeightsEnum, weights_path: str | None, download: bool, config_node: str
) -> Path:
    """The local file holding torchvision's ImageNet ``weights``, found by genbench's one resolver."""
    spec = WeightsFile(
        what="ImageNet",
        filename=Path(urlparse(weights.url).path).name,
        url=weights.url,
        config_node=config_node,
        alternative=PRETRAINED_FALLBACK,
    )
    return resolve_weights(spec, weights_path, download)


def load_weights(net: nn.Module, path: Path) -> None:
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, ValueError) as exc:
        raise WeightsNotFound(
            f"{path} does not hold the expected {type(net).__name__} weights: {exc}"
        ) from exc


class _Frozen(nn.Module):
    """Base for frozen nets: eval mode always; ImageNet normalisation of [0, 1] images."""

    name = "frozen"
    pretrained = True

    def __init__(self, resize: int | None) -> None:
        super().__init__()
        self.resize = resize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> _Frozen:
        return super().train(False)

    def imagenet_input(self, x: Tensor) -> Tensor:
        """(N, 1 or 3, H, W) in [0, 1] -> (N, 3, S, S) normalised, S = ``resize`` or H."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


class ResNet50Features(_Frozen):
    """(N, C, H, W) in [0, 1] -> (N, 2048): ImageNet ResNet-50's last pooling layer (the report's clustering)."""

    name = "resnet50"

    def __init__(
        self, weights_path: str | None = None, download: bool = False, resize: int | None = 224
    ) -> None:
        super().__init__(resize)
        weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1  # torchvision's original (2017) weights
        net = torchvision.models.resnet50(weights=None)
        load_weights(net, imagenet_weights(weights, weights_path, download, "model.features"))
        net.fc = nn.Identity()
        self.net = freeze(net)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.imagenet_input(x))


class VGG16Blocks(_Frozen):
    """(N, C, H, W) in [0, 1] -> [phi_1(x), ..., phi_n(x)]: ImageNet VGG16 features at the end of blocks 1..n."""

    name = "vgg16"

    def __init__(
        self,
        weights_path: str | None = None,
        download: bool = False,
        n_blocks: int = 5,
        resize: int | None = None,
    ) -> None:
        super().__init__(resize)
        if not 1 <= n_blocks <= len(VGG16_BLOCK_ENDS):
            raise ValueError(f"n_blocks must be in 1..{len(VGG16_BLOCK_ENDS)}, got {n_blocks}")
        weights = torchvision.models.VGG16_Weights.IMAGENET1K_V1
        net = torchvision.models.vgg16(weights=None)
        load_weights(net, imagenet_weights(weights, weights_path, download, "model.image_loss.network"))
        starts = (0, *VGG16_BLOCK_ENDS[: n_blocks - 1])
        self.blocks = freeze(
            nn.ModuleList(net.features[a:b] for a, b in zip(starts, VGG16_BLOCK_ENDS[:n_blocks], strict=True))
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        out, h = [], self.imagenet_input(x)
        for block in self.blocks:
            h = block(h)
            out.append(h)
        return out


class PixelFeatures(nn.Module):
    """(N, C, H, W) -> (N, C*H*W): the images themselves, for clustering without pretrained weights."""

    name = "pixels"
    pretrained = False

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


__all__ = [
    "PixelFeatures",
    "ResNet50Features",
    "VGG16Blocks",
    "WeightsNotFound",
    "freeze",
    "imagenet_weights",
]
