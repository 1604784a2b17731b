"""Evaluation throughput: sampling, feature extraction, and FID against torch-fidelity on the same images and
feature extractor.

The extractor is a small seeded CNN, registered with torch-fidelity under ``FIDELITY_EXTRACTOR`` so both tools run
the same network (Inception is timed too when its weights are on disk; it is never downloaded here). genbench's
FID is the pipeline its evaluators run: float images in [0, 1] on the device -> ``to_inception_input`` ->
features -> ``fid_from_features``. torch-fidelity starts from the same float images too: its time includes making
its uint8 CPU input (what a user of it must do with model samples); its metric-only time is recorded beside.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from genbench.interface import GenerativeModel
from genbench.metrics import (
    InceptionWeightsUnavailable,
    extract_features,
    fid_from_features,
    inception_extractor,
    load_inception,
    to_inception_input,
)

FIDELITY_EXTRACTOR = "genbench-bench-small-cnn"


class SmallCNN(nn.Module):
    """uint8 (N, 3, H, W) -> (N, 64) features; seeded, so every instance is the same network."""

    def __init__(self, features: int = 64) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = nn.Sequential(
                nn.Conv2d(3, 32, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(64, features, 3, stride=2, padding=1),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.float() / 255.0)


def register_small_cnn() -> None:
    """Make ``SmallCNN`` available to ``torch_fidelity.calculate_metrics(feature_extractor=FIDELITY_EXTRACTOR)``."""
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if FIDELITY_EXTRACTOR in FEATURE_EXTRACTORS_REGISTRY:
        return

    class FidelitySmallCNN(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.net = SmallCNN()

        @staticmethod
        def get_provided_features_list():
            return ("small",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "small"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 28, 28, dtype=torch.uint8)

        def forward(self, x):
            return (self.net(x),)

    torch_fidelity.register_feature_extractor(FIDELITY_EXTRACTOR, FidelitySmallCNN)


class _Images(torch.utils.data.Dataset):
    """torch-fidelity's input: a Dataset of bare uint8 (3, H, W) tensors."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    """(median seconds over ``repeats`` timed calls after one untimed warm-up call, the last result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


@torch.no_grad()
def sampling_throughput(
    model: GenerativeModel, n: int, batch_size: int, device: torch.device
) -> dict[str, Any]:
    """Samples/s of ``model.sample`` in eval mode, ``n`` samples in chunks of ``batch_size``, as the evaluators draw."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(0)
    chunks = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    try:
        seconds, _ = _timed(lambda: [model.sample(b, generator) for b in chunks], device, repeats=1)
    finally:
        model.train(was_training)
    return {"samples": n, "seconds": seconds, "samples_per_s": n / seconds}


def fid_against_torch_fidelity(
    reals: Tensor, fakes: Tensor, device: torch.device, batch_size: int, repeats: int
) -> dict[str, Any]:
    """Feature extraction speed and FID time, genbench vs torch-fidelity, with ``SmallCNN`` in both.

    ``reals``/``fakes``: float (N, C, H, W) in [0, 1] on ``device``.
    """
    import torch_fidelity

    net = SmallCNN().to(device)

    def extractor(x: Tensor) -> Tensor:
        return net(to_inception_input(x))  # (B, 64)

    def genbench_fid() -> float:
        return fid_from_features(
            extract_features(extractor, reals, batch_size), extract_features(extractor, fakes, batch_size)
        )

    features_s, _ = _timed(lambda: extract_features(extractor, reals, batch_size), device, repeats)
    genbench_s, fid = _timed(genbench_fid, device, repeats)

    register_small_cnn()

    def fidelity(real_u8: Tensor, fake_u8: Tensor) -> float:
        metrics = torch_fidelity.calculate_metrics(
            input1=_Images(fake_u8),
            input2=_Images(real_u8),
            fid=True,
            feature_extractor=FIDELITY_EXTRACTOR,
            batch_size=batch_size,
            cuda=device.type == "cuda",
            cache=False,
            verbose=False,
            save_cpu_ram=True,
        )
        return metrics["frechet_inception_distance"]

    def fidelity_from_floats() -> float:  # its uint8 (N, 3, H, W) CPU input is made here, as its users must
        return fidelity(to_inception_input(reals).cpu(), to_inception_input(fakes).cpu())

    fidelity_s, fidelity_value = _timed(fidelity_from_floats, device, repeats)
    real_u8, fake_u8 = to_inception_input(reals).cpu(), to_inception_input(fakes).cpu()
    metric_only_s, _ = _timed(lambda: fidelity(real_u8, fake_u8), device, repeats)
    return {
        "images": len(reals),
        "feature_extractor": f"SmallCNN ({FIDELITY_EXTRACTOR})",
        "features_per_s": len(reals) / features_s,
        "fid_seconds": genbench_s,
        "torch_fidelity_seconds": fidelity_s,
        "torch_fidelity_metric_only_seconds": metric_only_s,
        "fid_over_torch_fidelity": genbench_s / fidelity_s,
        "fid": fid,
        "torch_fidelity_fid": fidelity_value,
        "torch_fidelity_settings": "save_cpu_ram=True (no loader workers), cache=False, same batch size; "
        "torch_fidelity_seconds includes making its uint8 input from the same float images, "
        "torch_fidelity_metric_only_seconds does not",
    }


def inception_throughput(images: Tensor, device: torch.device, batch_size: int) -> dict[str, Any]:
    """Inception pool3 features/s on ``images`` when the weights are on disk (never downloaded here)."""
    try:
        inception = load_inception(download=False).to(device)
    except InceptionWeightsUnavailable as exc:
        return {"skipped": str(exc).split(". Put ")[0]}
    extractor = inception_extractor(inception)
    seconds, _ = _timed(lambda: extract_features(extractor, images, batch_size), device, repeats=1)
    return {"images": len(images), "features_per_s": len(images) / seconds}
