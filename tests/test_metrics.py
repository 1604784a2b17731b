"""The metric maths against closed forms, brute force and the reference libraries (torch-fidelity, torchmetrics)."""

from __future__ import annotations

import importlib
import logging
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
from scipy.spatial.distance import cdist as scipy_cdist
from torch import Tensor, nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torchmetrics.image.fid import FrechetInceptionDistance

from genbench.metrics import (
    InceptionWeightsUnavailable,
    MetricProtocol,
    cached_features,
    extract_features,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_extractor,
    kernel_inception_distance,
    load_inception,
    manifold_radii,
    memorisation_ratio,
    memorisation_ratio_of_distances,
    nearest_neighbours,
    precision_recall,
    to_inception_input,
    write_random_inception_weights,
)
from genbench.metrics.features import INCEPTION_WEIGHTS_FILE, PYTORCH_FID_WEIGHTS_FILE

TINY_EXTRACTOR = "genbench-test-tiny-cnn"


class _TinyCNN(nn.Module):
    """uint8 (N, 3, H, W) -> (N, 16) features, with the same random weights in every instance."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            self.conv = nn.Sequential(
                nn.Conv2d(3, 8, 3, stride=2),
                nn.ReLU(),
                nn.Conv2d(8, 16, 3, stride=2),
                nn.Tanh(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.float() / 255) * 10


class _TinyFidelityExtractor(FeatureExtractorBase):
    """The tiny CNN behind torch-fidelity's feature-extractor interface."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.net = _TinyCNN()

    @staticmethod
    def get_provided_features_list():
        return ("tiny",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "tiny"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 16, 16, dtype=torch.uint8)

    def forward(self, x):
        return (self.net(x),)


class _Images(torch.utils.data.Dataset):
    """torch-fidelity wants a Dataset that returns bare uint8 (3, H, W) tensors."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


@pytest.fixture(scope="module")
def image_sets() -> tuple[Tensor, Tensor]:
    """Two uint8 (64, 3, 16, 16) sets that differ in brightness, so FID and KID are clearly positive."""
    g = torch.Generator().manual_seed(7)
    real = (torch.rand(64, 3, 16, 16, generator=g) * 255).to(torch.uint8)
    fake = (torch.rand(64, 3, 16, 16, generator=g) * 160 + 60).to(torch.uint8)
    return real, fake


def _brute_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    m = len(x)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * kxy.mean()
    )


# ---------------------------------------------------------------- Frechet


def _stats(mu, sigma) -> dict[str, np.ndarray]:
    return {"mu": np.asarray(mu, dtype=np.float64), "sigma": np.asarray(sigma, dtype=np.float64)}


def test_frechet_distance_is_zero_for_identical_statistics():
    stats = feature_statistics(torch.randn(200, 8))
    assert stats["mu"].dtype == stats["sigma"].dtype == np.float64
    assert abs(frechet_distance(stats, stats)) < 1e-10


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 9.0])
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    got = frechet_distance(_stats(mu1, np.diag(s1)), _stats(mu2, np.diag(s2)))
    assert got == pytest.approx(expected, rel=1e-12)


def test_feature_statistics_match_numpy_in_float64():
    x = torch.randn(50, 6, dtype=torch.float32) * 3 + 2
    stats = feature_statistics(x)
    np.testing.assert_allclose(stats["mu"], x.double().numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["sigma"], np.cov(x.double().numpy(), rowvar=False), rtol=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_recipe_on_full_rank_statistics():
    import scipy.linalg

    a = feature_statistics(torch.randn(300, 10))
    b = feature_statistics(torch.randn(300, 10) @ torch.randn(10, 10) * 0.5 + 1)
    covmean = scipy.linalg.sqrtm(a["sigma"] @ b["sigma"]).real
    pytorch_fid = ((a["mu"] - b["mu"]) ** 2).sum() + np.trace(a["sigma"] + b["sigma"] - 2 * covmean)
    assert frechet_distance(a, b) == pytest.approx(pytorch_fid, rel=1e-8)


def test_frechet_distance_is_exact_for_singular_rank_one_covariances():
    # sqrtm returns inf for this product; Tr sqrt(u u^T Y^T Y) = sqrt(|Y u|^2) since the product has rank one.
    u = np.array([[1.0, 1, 1, -1]])
    y = np.array([[0.0, 0, -1, 0], [1, 0, 1, -1]])
    s1, s2, zero = u.T @ u, y.T @ y, np.zeros(4)
    expected = np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.square(y @ u.T).sum())
    assert frechet_distance(_stats(zero, s1), _stats(zero, s2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(_stats(np.zeros(3), np.eye(3)), _stats(np.zeros(4), np.eye(4)))


@pytest.mark.parametrize("dim", [16, 128])
def test_fid_kid_and_precision_recall_are_torch_fidelitys_functions_in_float64(dim):
    """genbench's metric functions are torch-fidelity's feature-to-metric functions, fed float64 features: equal
    to 1e-6 relative (1e-12 in practice) on random float32 features."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    g = torch.Generator().manual_seed(dim)
    real, fake = torch.randn(600, dim, generator=g), torch.randn(500, dim, generator=g) * 1.2 + 0.1
    fid = fid_statistics_to_metric(
        fid_features_to_statistics(real.double()), fid_features_to_statistics(fake.double()), verbose=False
    )["frechet_inception_distance"]
    assert fid_from_features(real, fake) == pytest.approx(fid, rel=1e-6)

    kid = kid_features_to_metric(
        fake.double(), real.double(), kid_subsets=7, kid_subset_size=300, rng_seed=11, verbose=False
    )
    ours = kernel_inception_distance(fake, real, num_subsets=7, subset_size=300, seed=11)
    assert ours.mean == pytest.approx(kid["kernel_inception_distance_mean"], rel=1e-6)
    assert ours.std == pytest.approx(kid["kernel_inception_distance_std"], rel=1e-6)

    prc = prc_features_to_metric(fake, real, prc_neighborhood=3, verbose=False)
    got = precision_recall(real, fake, k=3)
    assert 0 < got.precision < 1 and 0 < got.recall < 1
    assert got.precision == pytest.approx(prc["precision"], rel=1e-6)
    assert got.recall == pytest.approx(prc["recall"], rel=1e-6)
    assert got.precision * 500 == round(got.precision * 500)  # an exact share of the 500 samples


def test_fid_kid_and_precision_recall_agree_with_torch_fidelity_and_torchmetrics(image_sets):
    real, fake = image_sets
    if TINY_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(TINY_EXTRACTOR, _TinyFidelityExtractor)
    reference = torch_fidelity.calculate_metrics(
        input1=_Images(fake), input2=_Images(real), fid=True, kid=True, prc=True, kid_subsets=3, kid_subset_size=40,
        feature_extractor=TINY_EXTRACTOR, cuda=False, cache=False, verbose=False, save_cpu_ram=True, batch_size=16,
    )  # fmt: skip
    tm_fid = FrechetInceptionDistance(feature=_TinyCNN(), input_img_size=(3, 16, 16))
    tm_fid.update(real, real=True)
    tm_fid.update(fake, real=False)

    net = _TinyCNN()
    real_feats = extract_features(net, real, batch_size=10)  # (64, 16)
    fake_feats = extract_features(net, fake, batch_size=10)
    fid = fid_from_features(real_feats, fake_feats)
    assert fid > 0.1
    assert fid == pytest.approx(reference["frechet_inception_distance"], rel=1e-4)
    assert fid == pytest.approx(tm_fid.compute().item(), rel=1e-4)

    # Same seed and subset draws as torch-fidelity (which computes its kernels in float32).
    kid = kernel_inception_distance(fake_feats, real_feats, num_subsets=3, subset_size=40, seed=2020)
    assert kid.mean > 0
    assert kid.mean == pytest.approx(reference["kernel_inception_distance_mean"], rel=1e-4)
    assert kid.std == pytest.approx(reference["kernel_inception_distance_std"], rel=1e-3)

    pr = precision_recall(real_feats, fake_feats, k=3)
    assert pr.precision == pytest.approx(reference["precision"], rel=1e-6)
    assert pr.recall == pytest.approx(reference["recall"], rel=1e-6)


# ---------------------------------------------------------------- KID


def test_kid_on_whole_sets_equals_brute_force_unbiased_mmd():
    x, y = torch.randn(30, 5, dtype=torch.float64), torch.randn(30, 5, dtype=torch.float64) + 0.7
    kid = kernel_inception_distance(x, y, num_subsets=1, subset_size=30, seed=0)
    assert kid.mean == pytest.approx(_brute_mmd2_unbiased(x.numpy(), y.numpy()), rel=1e-10)
    assert kid.std == 0.0


def test_kid_mean_and_std_over_subsets_equal_brute_force_with_the_same_draws():
    x, y = torch.randn(25, 4, dtype=torch.float64), torch.randn(20, 4, dtype=torch.float64) * 2
    rng = np.random.RandomState(3)
    mmds = []
    for _ in range(4):
        i, j = rng.choice(25, 10, replace=False), rng.choice(20, 10, replace=False)
        mmds.append(_brute_mmd2_unbiased(x.numpy()[i], y.numpy()[j]))
    kid = kernel_inception_distance(x, y, num_subsets=4, subset_size=10, seed=3)
    assert kid.mean == pytest.approx(np.mean(mmds), rel=1e-10)
    assert kid.std == pytest.approx(np.std(mmds), rel=1e-8)


def test_kid_of_whole_equal_sized_sets_is_one_mmd_with_no_spread():
    """Subsets as large as both sets are the sets themselves: the mean of 100 such draws is their one MMD^2."""
    x, y = torch.randn(40, 5, dtype=torch.float64), torch.randn(40, 5, dtype=torch.float64) + 0.5
    kid = kernel_inception_distance(x, y, num_subsets=100, subset_size=40, seed=1)
    assert kid.mean == pytest.approx(_brute_mmd2_unbiased(x.numpy(), y.numpy()), rel=1e-10)
    assert kid.std == 0.0


def test_kid_rejects_a_subset_larger_than_a_set():
    with pytest.raises(ValueError, match="subset size"):
        kernel_inception_distance(torch.randn(10, 3), torch.randn(8, 3), num_subsets=1, subset_size=9)


# ---------------------------------------------------------------- precision / recall


def _brute_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    real_radii = np.sort(scipy_cdist(real, real), axis=1)[:, k]  # column 0 is the point itself
    fake_radii = np.sort(scipy_cdist(fake, fake), axis=1)[:, k]
    fake_to_real = scipy_cdist(fake, real)  # (M, N)
    precision = (fake_to_real <= real_radii[None, :]).any(axis=1).mean()
    recall = (fake_to_real.T <= fake_radii[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


def test_precision_recall_match_brute_force():
    real = torch.randn(50, 5, dtype=torch.float64)
    fake = torch.randn(41, 5, dtype=torch.float64) + 1.0
    got = precision_recall(real, fake, k=3)
    want = _brute_precision_recall(real.numpy(), fake.numpy(), 3)
    assert 0 < got.precision < 1 and 0 < got.recall < 1
    assert got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize(("n_real", "n_fake", "block"), [(600, 500, 2048), (3000, 2500, 700)])
def test_precision_recall_equal_torch_fidelity_in_blocks_and_with_given_radii(
    n_real, n_fake, block, monkeypatch
):
    """genbench's own precision/recall (row blocks, real radii computed once) counts exactly what
    torch-fidelity's ``prc_features_to_metric`` counts, whatever the block size, with or without given radii."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    module = importlib.import_module("genbench.metrics.precision_recall")  # the package exports the function
    monkeypatch.setattr(module, "BLOCK_ROWS", block)
    g = torch.Generator().manual_seed(n_real)
    real, fake = torch.randn(n_real, 32, generator=g), torch.randn(n_fake, 32, generator=g) * 1.1 + 0.05
    want = prc_features_to_metric(fake, real, prc_neighborhood=3, verbose=False)
    radii = manifold_radii(real, 3)
    assert radii.shape == (n_real,)
    for got in (precision_recall(real, fake, k=3), precision_recall(real, fake, k=3, real_radii=radii)):
        assert 0 < got.precision < 1 and 0 < got.recall < 1
        assert round(got.precision * n_fake) == round(want["precision"] * n_fake)
        assert round(got.recall * n_real) == round(want["recall"] * n_real)
    with pytest.raises(ValueError, match="real_radii"):
        precision_recall(real, fake, k=3, real_radii=radii[:-1])


def test_precision_recall_edge_cases():
    real = torch.randn(40, 4)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    # A collapsed model that only reproduces a few real images: perfect precision, poor recall.
    collapsed = precision_recall(real, real[:5].repeat(4, 1))
    assert collapsed.precision == 1.0 and collapsed.recall < 0.5
    with pytest.raises(ValueError, match="k="):
        precision_recall(real[:3], real[:5], k=3)  # a ball needs k other points


# ---------------------------------------------------------------- nearest neighbours, memorisation


@pytest.mark.parametrize(("k", "chunk_size"), [(1, 7), (3, 10), (12, 5), (4, 1000)])
def test_nearest_neighbours_match_brute_force(k, chunk_size):
    queries, reference = torch.randn(37, 6), torch.randn(53, 6)
    dists, idx = nearest_neighbours(queries, reference, k=k, chunk_size=chunk_size)
    want_d, want_i = torch.cdist(queries, reference).topk(k, dim=1, largest=False)
    assert dists.shape == idx.shape == (37, k) and idx.dtype == torch.int64
    torch.testing.assert_close(dists, want_d, rtol=1e-5, atol=1e-5)
    assert torch.equal(idx, want_i)


def test_nearest_neighbours_reject_k_above_reference_size():
    with pytest.raises(ValueError, match="k="):
        nearest_neighbours(torch.randn(3, 2), torch.randn(4, 2), k=5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nearest_neighbours_on_cuda_match_cpu():
    queries, reference = torch.randn(300, 32), torch.randn(700, 32)
    cpu_d, cpu_i = nearest_neighbours(queries, reference, k=5, chunk_size=128)
    gpu_d, gpu_i = nearest_neighbours(queries.cuda(), reference.cuda(), k=5, chunk_size=128)
    assert gpu_d.is_cuda and gpu_i.is_cuda
    torch.testing.assert_close(gpu_d.cpu(), cpu_d, rtol=1e-4, atol=1e-4)
    assert (gpu_i.cpu() == cpu_i).float().mean() > 0.99


def test_memorisation_ratio_closed_form():
    train = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    samples = torch.tensor([[1.0, 0.0], [9.0, 0.0], [0.0, 0.5]])  # NN distances 1, 1, 0.5: mean 2.5/3
    test = torch.tensor([[0.0, 2.0], [13.0, 0.0]])  # NN distances 2, 3: mean 2.5
    assert memorisation_ratio(samples, test, train, chunk_size=1) == pytest.approx((2.5 / 3) / 2.5)
    distances = torch.tensor([1.0, 1.0, 0.5]), torch.tensor([2.0, 3.0])
    assert memorisation_ratio_of_distances(*distances) == pytest.approx((2.5 / 3) / 2.5, rel=1e-12)
    with pytest.raises(ValueError, match="non-empty"):
        memorisation_ratio_of_distances(torch.ones(3), torch.ones(0))


# ---------------------------------------------------------------- feature extraction


def test_to_inception_input_rounds_and_tiles_grey_to_rgb():
    grey = torch.tensor([0.0, 1.0, 0.5, 0.2, -0.1, 1.3]).reshape(1, 1, 2, 3)
    out = to_inception_input(grey)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 2, 3)
    assert out[0, 0].flatten().tolist() == [0, 255, 128, 51, 0, 255]
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


def test_extract_features_batches_tensors_and_loaders_alike_without_grad():
    net = nn.Linear(12, 3)
    images = torch.rand(23, 1, 3, 4)

    def extractor(x: Tensor) -> Tensor:
        return net(x.flatten(1))

    from_tensor = extract_features(extractor, images, batch_size=5)
    loader = [(images[i : i + 8], torch.zeros(8)) for i in range(0, 23, 8)]  # (image, label) batches
    from_loader = extract_features(extractor, loader)
    assert from_tensor.shape == (23, 3) and not from_tensor.requires_grad
    torch.testing.assert_close(from_tensor, net(images.flatten(1)).detach())
    torch.testing.assert_close(from_loader, from_tensor)


def test_metric_protocol_records_the_protocol():
    record = MetricProtocol(n_gen=10_000, n_ref=10_000, reference_split="test").to_dict()
    assert record["n_gen"] == 10_000 and record["reference_split"] == "test"
    assert "inception" in record["feature_extractor"] and "299" in record["resizer"]


# ---------------------------------------------------------------- reference-feature cache


def test_cached_features_writes_once_reuses_and_recomputes_corrupt_files(tmp_path, caplog):
    key = {"dataset": "mnist", "split": "test", "image_size": 28, "extractor": "tiny", "n": 4}
    calls = []

    def compute() -> Tensor:
        calls.append(1)
        return torch.arange(8.0).reshape(4, 2)

    first = cached_features(key, compute, tmp_path)
    second = cached_features(dict(reversed(list(key.items()))), compute, tmp_path)  # key order irrelevant
    assert len(calls) == 1 and torch.equal(first, second)
    (cache_file,) = tmp_path.glob("features-*.pt")
    assert not list(tmp_path.glob("*.tmp"))

    cached_features({**key, "n": 5}, compute, tmp_path)  # another key -> another file
    assert len(calls) == 2 and len(list(tmp_path.glob("features-*.pt"))) == 2

    cache_file.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="genbench.metrics.cache"):
        again = cached_features(key, compute, tmp_path)
    assert len(calls) == 3 and torch.equal(again, first) and "unreadable" in caplog.text
    cached_features(key, compute, tmp_path)
    assert len(calls) == 3  # the rewritten file is good again


# ---------------------------------------------------------------- Inception weights


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """A torch hub cache with nothing in it, whatever the developer's machine has."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_load_inception_without_weights_names_the_file_and_where_to_put_it(empty_torch_home, monkeypatch):
    with pytest.raises(InceptionWeightsUnavailable) as missing:
        load_inception(None, download=False)
    message = str(missing.value)
    assert INCEPTION_WEIGHTS_FILE in message and PYTORCH_FID_WEIGHTS_FILE in message
    assert str(empty_torch_home) in message and "eval.inception.weights_path" in message

    with pytest.raises(InceptionWeightsUnavailable, match="no such file"):
        load_inception(empty_torch_home / "nope.pth")

    def no_network(url, dst, progress=True):
        raise urllib.error.URLError("network is closed")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(InceptionWeightsUnavailable, match="network is closed") as failed:
        load_inception(None, download=True)
    assert INCEPTION_WEIGHTS_FILE in str(failed.value)
    assert not any(empty_torch_home.glob("*.pth")), "a failed download must not leave a file in the cache"


def test_real_inception_class_loads_random_weights_from_the_hub_cache(empty_torch_home):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    write_random_inception_weights(empty_torch_home / PYTORCH_FID_WEIGHTS_FILE)
    inception = load_inception(None, download=False)  # found in the cache under pytorch-fid's name
    assert isinstance(inception, FeatureExtractorInceptionV3) and not inception.training
    features = extract_features(inception_extractor(inception), torch.rand(2, 1, 28, 28))
    assert features.shape == (2, 2048) and torch.isfinite(features).all()


# ---------------------------------------------------------------- the one weight resolver


def test_resolve_weights_path_cache_alias_download_and_one_line_errors(
    empty_torch_home, tmp_path, monkeypatch
):
    from genbench.weights import WeightsFile, WeightsNotFound, resolve_weights

    spec = WeightsFile(
        "Tiny", "tiny-123.pth", "https://example.invalid/tiny-123.pth", "eval.tiny", ("alias.pth",)
    )
    given = tmp_path / "mine.pth"
    given.write_bytes(b"w")
    assert resolve_weights(spec, str(given), download=False) == given
    with pytest.raises(WeightsNotFound) as missing:
        resolve_weights(
            spec, str(tmp_path / "nope.pth"), download=True
        )  # a configured path is never bypassed
    assert f"eval.tiny.weights_path={tmp_path / 'nope.pth'}: no such file" in str(missing.value)

    with pytest.raises(WeightsNotFound) as absent:
        resolve_weights(spec, None, download=False)
    message = str(absent.value)
    assert "\n" not in message and str(empty_torch_home / "tiny-123.pth") in message
    assert (
        "eval.tiny.weights_path" in message
        and "eval.tiny.download=true" in message
        and "alias.pth" in message
    )

    empty_torch_home.mkdir(parents=True)
    (empty_torch_home / "alias.pth").write_bytes(b"w")
    assert resolve_weights(spec, None, download=False) == empty_torch_home / "alias.pth"
    (empty_torch_home / "alias.pth").unlink()

    fetched = []

    def fake_download(url, dst, progress=True):
        fetched.append(url)
        Path(dst).write_bytes(b"downloaded")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    path = resolve_weights(spec, None, download=True)
    assert path == empty_torch_home / "tiny-123.pth" and path.read_bytes() == b"downloaded"
    assert fetched == [spec.url] and not list(empty_torch_home.glob("*.tmp"))
    assert resolve_weights(spec, None, download=True) == path and len(fetched) == 1  # cached now
