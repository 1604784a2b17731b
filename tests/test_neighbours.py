"""genbench's one k-NN search (``genbench.metrics.knn.knn``) against brute force, its callers, and the
``neighbours`` evaluator's output on a small fixture (pinned against a brute-force re-implementation)."""

from __future__ import annotations

import logging
from functools import partial

import pytest
import torch

from genbench import latent
from genbench.callbacks.evaluation import run_evaluators
from genbench.classifier import DigitClassifier, TrainedClassifier, state_digest
from genbench.data import ImageDataModule
from genbench.data.sources import DigitsSource
from genbench.evaluators import neighbours as neighbours_module
from genbench.evaluators.neighbours import SAMPLE_OFFSET, NearestNeighbours, TrainingChunks
from genbench.evaluators.sampling import draw_samples
from genbench.metrics import FeatureExtractor
from genbench.metrics import neighbours as metric_neighbours
from genbench.metrics.knn import knn
from genbench.models.vae import VAE
from genbench.nets.conv import ConvDecoder, ConvEncoder
from genbench.progress import Progress


def brute_force(queries, reference, k):
    """Reference answer: float64 torch.cdist + a full sort."""
    d = torch.cdist(queries.double(), reference.double())
    d, i = d.sort(dim=1, stable=True)
    return d[:, :k], i[:, :k]


def assert_same_neighbours(got_d, got_i, queries, reference, k, atol=1e-4):
    """Distances match brute force; every index returned is at the distance it claims (ties may swap)."""
    want_d, want_i = brute_force(queries, reference, k)
    assert got_d.shape == got_i.shape == (queries.shape[0], k) and got_i.dtype == torch.int64
    torch.testing.assert_close(got_d.double(), want_d, rtol=1e-5, atol=atol)
    actual = (queries.double()[:, None] - reference.double()[got_i]).norm(dim=-1)  # (Q, k)
    torch.testing.assert_close(actual, want_d, rtol=1e-5, atol=atol)
    assert (got_i == want_i).float().mean() > 0.99  # random data: ties are (almost) impossible


@pytest.mark.parametrize(
    ("n_q", "n_r", "dim", "k", "chunk_size"),
    [
        (37, 53, 6, 1, 7),  # chunks smaller than both sets, many blocks each way
        (37, 53, 6, 3, 10),
        (37, 53, 6, 12, 5),  # k > chunk: the running top-k merges several blocks
        (37, 53, 6, 53, 8),  # k = R: a full sort
        (100, 400, 32, 5, 1000),  # one chunk larger than both sets
        (1, 1, 3, 1, 1),
        (257, 129, 784, 5, 64),  # pixel-sized rows
        (64, 300, 17, 4, 300),  # chunk = R exactly
    ],
)
def test_knn_matches_brute_force(n_q, n_r, dim, k, chunk_size):
    queries, reference = torch.randn(n_q, dim), torch.randn(n_r, dim)
    d, i = knn(queries, reference, k, chunk_size)
    assert_same_neighbours(d, i, queries, reference, k)
    squared, same_i = knn(queries, reference, k, chunk_size, squared=True)
    assert torch.equal(same_i, i) and torch.allclose(squared, d.pow(2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize(("block", "chunk_size"), [(7, 4), (50, 1000), (1, 3), (23, 23)])
def test_knn_streams_reference_blocks(k, block, chunk_size):
    queries, reference = torch.rand(13, 9), torch.rand(50, 9)
    seen = []
    blocks = (
        reference[s : s + block].double() for s in range(0, 50, block)
    )  # any dtype: cast to the queries'
    d, i = knn(queries, blocks, k, chunk_size, on_block=seen.append)
    assert d.dtype == torch.float32 and sum(seen) == 50 and len(seen) == -(-50 // block)
    assert_same_neighbours(d, i, queries, reference, k)


def test_knn_ties_and_duplicates():
    reference = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    queries = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.5, 0.5]])
    d, i = knn(queries, reference, 1, chunk_size=1)
    assert i[:, 0].tolist() == [1, 0, 0]  # k = 1: the lowest index among equals, across blocks
    assert d[:2, 0].abs().max() < 1e-3  # duplicates read (about) 0, never NaN
    d3, i3 = knn(queries, reference, 3, chunk_size=2)
    assert len(set(i3[2].tolist())) == 3 and set(i3[2].tolist()) <= {0, 1, 2, 3}  # 4 tied: any 3 of them
    torch.testing.assert_close(d3[2], torch.full((3,), 0.5**0.5), rtol=1e-5, atol=1e-5)


def test_knn_float64_and_empty_queries():
    queries, reference = torch.randn(20, 5, dtype=torch.float64), torch.randn(30, 5, dtype=torch.float64)
    d, i = knn(queries, reference, 4, 8)
    assert d.dtype == torch.float64
    want_d, want_i = brute_force(queries, reference, 4)
    torch.testing.assert_close(d, want_d, rtol=1e-10, atol=1e-10)
    assert torch.equal(i, want_i)
    d, i = knn(torch.randn(0, 5), reference.float(), 2)
    assert d.shape == i.shape == (0, 2)


def test_knn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k="):
        knn(torch.randn(3, 2), torch.randn(4, 2), k=5)
    with pytest.raises(ValueError, match="k="):
        knn(torch.randn(3, 2), iter([torch.randn(2, 2), torch.randn(2, 2)]), k=5)  # found after streaming
    with pytest.raises(ValueError, match="k="):
        knn(torch.randn(3, 2), torch.randn(4, 2), k=0)
    with pytest.raises(ValueError, match="need"):
        knn(torch.randn(3, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match="blocks"):
        knn(torch.randn(3, 2), [torch.randn(4, 3)])
    with pytest.raises(ValueError, match="chunk_size"):
        knn(torch.randn(3, 2), torch.randn(4, 2), chunk_size=0)


def test_every_caller_is_the_one_knn():
    """metrics.neighbours and latent's IMLE/inversion helper go through knn: same answers."""
    queries, reference, test = torch.randn(40, 8), torch.randn(90, 8), torch.randn(30, 8)
    d, i = knn(queries, reference, 3, 16)
    assert metric_neighbours.nearest_neighbours is knn
    sq, idx = latent.nearest_neighbours(queries, reference, chunk=16)
    assert torch.equal(idx, i[:, 0]) and torch.allclose(sq, d[:, 0].pow(2), rtol=1e-5, atol=1e-6)
    want = brute_force(queries, reference, 1)[0].mean() / brute_force(test, reference, 1)[0].mean()
    got = metric_neighbours.memorisation_ratio(queries, test, reference, chunk_size=16)
    assert got == pytest.approx(float(want), rel=1e-5)


def test_search_progress_logs_counts_and_eta(caplog):
    clock = iter([0.0, 5.0, 11.0, 12.0, 30.0])
    progress = Progress(  # started at t=0
        "neighbours: pixel search",
        100,
        unit="training images",
        bar=False,
        clock=lambda: next(clock),
        logger=logging.getLogger("genbench.evaluators.neighbours"),
    )
    with caplog.at_level(logging.INFO, logger="genbench.evaluators.neighbours"):
        progress(10)  # t=5: too early
        progress(10)  # t=11: a line, 20/100, ETA 44 s
        progress(10)  # t=12: too soon after the last line
        progress(70)  # t=30: done, no progress line
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["neighbours: pixel search: 20/100 training images (20%), 11s elapsed, ETA 44s"]


# -- the evaluator on a small fixture ------------------------------------------------------------------------------
SIZE = 16


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> ImageDataModule:
    dm = ImageDataModule(
        "digits", DigitsSource, None, SIZE, 1, cache_dir=str(tmp_path_factory.mktemp("cache"))
    )
    dm.prepare_data()
    return dm


def small_vae() -> VAE:
    torch.manual_seed(0)
    return VAE(
        encoder=partial(ConvEncoder, channels=1, image_size=SIZE, base_width=8),
        decoder=partial(ConvDecoder, channels=1, image_size=SIZE, base_width=8),
        latent_dim=4,
    )


def features(x):  # a metric other than pixel L2
    return x.flatten(1)[:, ::3] * torch.linspace(0, 1, 86)


class Fixed:
    """A feature source that always has ``extractor``."""

    def __init__(self, extractor: FeatureExtractor) -> None:
        self.extractor, self.name = extractor, extractor.name

    def load(self, ctx) -> FeatureExtractor:
        return self.extractor


WEIGHTED = Fixed(
    FeatureExtractor("weighted", features, "every third pixel, weighted")
)  # no digest: not cached


def reference_neighbours(ctx, evaluator: NearestNeighbours, n: int):
    """The evaluator's outputs by brute force (the pre-knn implementation's semantics): (ratio, figure)."""
    ctx.model.eval()  # as run_evaluators draws them
    samples = draw_samples(ctx, n, evaluator.batch_size, offset=SAMPLE_OFFSET).float()
    train = ctx.datamodule.split("train").images.float().div(255)  # (T, C, H, W)
    test = ctx.datamodule.split("test").images[:n].float().div(255)
    flat_train = train.flatten(1)
    sample_d = torch.cdist(samples.flatten(1).double(), flat_train.double()).min(dim=1).values
    test_d = torch.cdist(test.flatten(1).double(), flat_train.double()).min(dim=1).values
    rows = samples[: evaluator.rows]
    pix_d, pix = torch.cdist(rows.flatten(1), flat_train).topk(evaluator.k, dim=1, largest=False)
    feat_d, feat = torch.cdist(features(rows), features(train)).topk(evaluator.k, dim=1, largest=False)
    figure = torch.cat([rows[:, None], train[pix], train[feat]], dim=1)  # (rows, 1 + 2k, C, H, W)
    return float(sample_d.mean() / test_d.mean()), figure, (pix_d, feat_d)


@pytest.mark.parametrize("chunk_size", [100, 5000])
def test_evaluator_output_unchanged_on_a_fixture(digits, tmp_path, chunk_size, monkeypatch):
    figures = []  # what the evaluator draws: the samples column, then each block (images, distances)
    render = neighbours_module.render_neighbours

    def spy(samples, blocks, caption, min_cell):
        figures.append((samples, blocks, caption))
        return render(samples, blocks, caption, min_cell)

    monkeypatch.setattr(neighbours_module, "render_neighbours", spy)
    ratios = []  # the evaluator's ratio is the tested metric function's
    ratio_of = neighbours_module.memorisation_ratio_of_distances
    monkeypatch.setattr(
        neighbours_module,
        "memorisation_ratio_of_distances",
        lambda *d: ratios.append(ratio_of(*d)) or ratios[-1],
    )
    evaluator = NearestNeighbours(
        rows=4,
        k=3,
        n_samples=200,
        batch_size=64,
        chunk_size=chunk_size,
        features=WEIGHTED,
        cache_dir=str(tmp_path / "cache"),
    )
    model = small_vae()

    def evaluate():
        return run_evaluators(
            {"neighbours": evaluator}, model, digits, tmp_path, torch.device("cpu"), seed=0, final=True
        )

    results, ctx = evaluate()
    with torch.no_grad():
        want_ratio, want_figure, (pix_d, feat_d) = reference_neighbours(ctx, evaluator, 200)
    assert results["memorisation_ratio@prior"] == pytest.approx(want_ratio, rel=1e-5)
    assert ratios == [results["memorisation_ratio@prior"]]
    samples, blocks, caption = figures[-1]
    images = torch.cat([samples[:, None], *(b.images for b in blocks)], dim=1)
    assert images.shape == (4, 1 + 2 * 3, 1, SIZE, SIZE)
    assert torch.equal(images, want_figure)  # the same images in the same places
    torch.testing.assert_close(blocks[0].distances, pix_d, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(blocks[1].distances, feat_d, rtol=1e-4, atol=1e-4)
    assert [b.title for b in blocks] == ["pixel space (L2)", "weighted feature space (L2)"]
    assert (tmp_path / "neighbours.png").is_file()
    n_test = min(200, len(digits.split("test")))
    assert results["protocols"]["memorisation_ratio@prior"] == {
        "n_samples": 200,
        "n_test": n_test,
        "n_train": len(digits.split("train")),
        "distance": "pixel L2, [0, 1] images",
    }

    # a second evaluation reads the test images' distances and the train features from the cache: same output
    cached = sorted((tmp_path / "cache").glob("features-*.pt"))
    assert (
        len(cached) == 1
    )  # the test distances (this extractor is no classifier: its features are not cached)
    again, _ = evaluate()
    assert again["memorisation_ratio@prior"] == pytest.approx(results["memorisation_ratio@prior"], rel=1e-6)
    assert torch.equal(
        torch.cat([figures[-1][0][:, None], *(b.images for b in figures[-1][1])], dim=1), images
    )


def test_classifier_features_of_the_train_split_are_cached(digits, tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = DigitClassifier(channels=1, image_size=SIZE).eval()
    trained = TrainedClassifier(net, 0.5, state_digest(net.state_dict()))
    extractor = FeatureExtractor("classifier", trained.features, "a classifier", digest=trained.digest)
    assert extractor.cache_id == f"classifier:{trained.digest}" and WEIGHTED.extractor.cache_id is None
    evaluator = NearestNeighbours(
        rows=2, k=2, n_samples=50, features=Fixed(extractor), cache_dir=str(tmp_path / "cache")
    )
    model = small_vae()
    first, ctx = run_evaluators({"nb": evaluator}, model, digits, tmp_path, torch.device("cpu"), 0, True)
    assert len(list((tmp_path / "cache").glob("features-*.pt"))) == 2  # test distances, train features
    picture = ctx.pictures["neighbours"]

    def no_extraction(*args, **kwargs):
        raise AssertionError("train features recomputed despite the cache")

    monkeypatch.setattr(neighbours_module, "extract_features", no_extraction)
    again, ctx = run_evaluators({"nb": evaluator}, model, digits, tmp_path, torch.device("cpu"), 0, True)
    assert torch.equal(ctx.pictures["neighbours"], picture)
    assert again["memorisation_ratio@prior"] == pytest.approx(first["memorisation_ratio@prior"], rel=1e-6)


def test_training_chunks_keep_small_splits_and_stream_large_ones(digits):
    ctx = type("Ctx", (), {"datamodule": digits, "device": torch.device("cpu")})()
    train = digits.split("train").images.flatten(1).float().div(255)
    small = TrainingChunks(ctx, 100)
    first, second = list(small), list(small)
    assert all(a is b for a, b in zip(first, second, strict=True))  # kept: no second conversion
    assert torch.equal(torch.cat(first), train) and len(small) == len(train)
    large = TrainingChunks(ctx, 100, keep_bytes=0)
    first, second = list(large), list(large)
    assert not any(a is b for a, b in zip(first, second, strict=True))
    assert torch.equal(torch.cat(second), train)


def test_draw_samples_is_one_generator_in_batches_and_held_out_split_falls_back_to_train(digits):
    from types import SimpleNamespace

    from genbench.evaluators.base import EvalContext
    from genbench.evaluators.sampling import held_out_split, sample_batches

    model = small_vae().eval()
    ctx = EvalContext(model, digits, None, torch.device("cpu"), seed=3)
    with torch.no_grad():
        drawn = draw_samples(ctx, 70, 32, offset=SAMPLE_OFFSET)
        sizes = [len(b) for b in sample_batches(ctx, 70, 32, ctx.generator(SAMPLE_OFFSET))]
        generator, direct = ctx.generator(SAMPLE_OFFSET), []
        for size in (32, 32, 6):
            direct.append(model.sample(size, generator=generator))
    assert drawn.shape == (70, 1, SIZE, SIZE) and sizes == [32, 32, 6]
    assert torch.equal(drawn, torch.cat(direct))  # the same draws as one generator used batch by batch
    assert held_out_split(digits) == "test"
    no_test = SimpleNamespace(split=lambda name: [] if name == "test" else [0])
    assert held_out_split(no_test) == "train" and held_out_split(digits, "train") == "train"
