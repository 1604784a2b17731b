"""Real formats load with the known counts; every kind of bad input raises a clear DataError."""

from __future__ import annotations

import gzip
from functools import partial

import numpy as np
import pytest
import torch

from genbench.data import DataError, ImageDataModule
from genbench.data.idx import IMAGES_MAGIC, read_idx
from genbench.data.sampler import IndexBatchSampler, partition_indices
from genbench.data.sources import CelebASource, DigitsSource, FrogsSource, IDXSource

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.parametrize("folder,test_counts", [("MNIST", MNIST_TEST_COUNTS), ("FashionMNIST", [1000] * 10)])
def test_idx_datasets_load_with_known_counts(shared_data, folder, test_counts):
    source = IDXSource(shared_data, image_size=28, folder=folder)
    train, test = source.load("train"), source.load("test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8
    assert torch.bincount(test.labels, minlength=10).tolist() == test_counts
    assert int(train.images.max()) == 255


def test_celeba_subset_loads_cropped_and_split(shared_data):
    source = CelebASource(shared_data, image_size=32, crop_size=140)
    train, test = source.load("train"), source.load("test")
    # the subset's partition file lists 4,560 train, 780 val and 660 test images; val is in neither split
    assert train.images.shape == (4560, 3, 32, 32) and test.images.shape == (660, 3, 32, 32)
    assert (train.labels == -1).all()
    assert 0 <= int(train.images.min()) and int(train.images.max()) <= 255 and train.images.float().std() > 20


def test_frogs_sample_composited_on_white(shared_data):
    source = FrogsSource(shared_data, image_size=64, n_train=20)
    train, test = source.load("train"), source.load("test")
    assert train.images.shape == (20, 3, 64, 64) and test.images.shape == (3, 3, 64, 64)
    corners = train.images[:, :, 0, 0].float()
    assert corners.mean() > 240  # transparent background became white, not black


def test_digits_default_split_is_fixed():
    source = DigitsSource(None, image_size=16)
    a, b = source.load("train"), source.load("train")
    assert a.images.shape == (1438, 1, 16, 16) and len(source.load("test")) == 359
    assert torch.equal(a.images, b.images)


def test_datamodule_batches_by_index_on_device(tmp_path):
    dm = ImageDataModule("digits", DigitsSource, None, 16, 1, batch_size=32, cache_dir=str(tmp_path))
    dm.prepare_data()
    loader = dm.train_dataloader()
    raw = next(iter(loader))
    assert raw.dtype == torch.int64 and raw.shape == (32,)
    batch = dm.on_after_batch_transfer(raw, 0)
    assert batch.image.shape == (32, 1, 16, 16) and batch.image.dtype == torch.float32
    expected = dm.split("train").images[raw].float() / 255
    assert torch.equal(batch.image, expected)
    assert torch.equal(batch.label, dm.split("train").labels[raw])
    assert list(tmp_path.glob("digits-train-16px-*.pt")), "decoded split not cached"


def test_classic_dataloader_path_yields_same_batch_type(tmp_path):
    dm = ImageDataModule(
        "digits", DigitsSource, None, 16, 1, batch_size=32, cache_dir=str(tmp_path), device_resident=False
    )
    image, label, index = next(iter(dm.train_dataloader()))
    batch = dm.on_after_batch_transfer((image, label, index), 0)
    assert torch.equal(batch.image, dm.split("train").images[batch.index].float() / 255)


def test_sampler_shards_are_disjoint_equal_length_and_reshuffled():
    shards = partition_indices(103, 2, seed=3)
    assert set(shards[0].tolist()).isdisjoint(shards[1].tolist())
    assert sorted(torch.cat(shards).tolist()) == list(range(103))
    samplers = [IndexBatchSampler(103, 10, seed=3, rank=r, world_size=2) for r in range(2)]
    assert len(samplers[0]) == len(samplers[1]) == 5
    for rank, sampler in enumerate(samplers):
        first = torch.cat(list(sampler))
        assert set(first.tolist()) <= set(shards[rank].tolist())
        sampler.set_epoch(1)
        assert not torch.equal(first, torch.cat(list(sampler)))
        sampler.set_epoch(0)
        assert torch.equal(first, torch.cat(list(sampler)))  # the epoch alone fixes the order: resumable


def test_cache_rebuilds_corrupt_file(tmp_path, caplog):
    dm = ImageDataModule("digits", DigitsSource, None, 16, 1, cache_dir=str(tmp_path))
    expected = dm.split("train").images.clone()
    cached = next(tmp_path.glob("digits-train-*.pt"))
    cached.write_bytes(b"not a tensor file")
    fresh = ImageDataModule("digits", DigitsSource, None, 16, 1, cache_dir=str(tmp_path))
    assert torch.equal(fresh.split("train").images, expected)
    assert "unreadable cache" in caplog.text


# -- bad input ------------------------------------------------------------------------------------------------------
def _write_idx(path, magic, shape, payload: bytes):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + payload)


def test_missing_mnist_names_the_file_and_remedy(tmp_path):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*data\.download=true"):
        IDXSource(tmp_path, folder="MNIST").load("train")


def test_wrong_magic_number(tmp_path):
    path = tmp_path / "x.gz"
    _write_idx(path, 1234, (2, 2, 2), bytes(8))
    with pytest.raises(DataError, match="magic number 1234"):
        read_idx(path, IMAGES_MAGIC)


def test_count_disagrees_with_header(tmp_path):
    path = tmp_path / "x.gz"
    _write_idx(path, IMAGES_MAGIC, (3, 2, 2), bytes(8))
    with pytest.raises(DataError, match="header promises 12"):
        read_idx(path, IMAGES_MAGIC)


def test_truncated_gzip(tmp_path):
    path = tmp_path / "x.gz"
    _write_idx(
        path,
        IMAGES_MAGIC,
        (50, 28, 28),
        np.random.default_rng(0).integers(0, 256, 50 * 784, dtype=np.uint8).tobytes(),
    )
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="not a complete gzip"):
        read_idx(path, IMAGES_MAGIC)


def test_image_label_count_mismatch(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", IMAGES_MAGIC, (2, 28, 28), bytes(2 * 784))
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", 2049, (3,), bytes(3))
    with pytest.raises(DataError, match="2 images but .* 3 labels"):
        IDXSource(tmp_path, folder="MNIST").load("test")


def test_unreadable_image_named(tmp_path):
    folder = tmp_path / "frogs"
    folder.mkdir()
    (folder / "frog-1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="frog-1.png"):
        FrogsSource(tmp_path).load("train")


def test_missing_celeba_folder(tmp_path):
    with pytest.raises(DataError, match="img_align_celeba"):
        CelebASource(tmp_path).load("train")


def test_missing_frogs(tmp_path):
    with pytest.raises(DataError, match="jonshamir/frog-dataset"):
        FrogsSource(tmp_path).load("train")


def test_channel_mismatch_in_config(tmp_path):
    with pytest.raises(ValueError, match="channels"):
        ImageDataModule("mnist", partial(IDXSource, folder="MNIST"), tmp_path, 28, 3)


def test_the_frogs_default_batch_fits_the_23_image_sample(shared_data, tmp_path, caplog):
    """conf/data/frogs.yaml keeps the report's batch of 75; on the 23-frog sample the batch shrinks to the split
    (one batch an epoch) with a warning, instead of a run that cannot start."""
    from hydra.utils import instantiate

    from helpers import compose_config

    cfg = compose_config(["data=frogs", f"data.root={shared_data}", f"data.cache_dir={tmp_path}"], tmp_path)
    assert cfg.data.batch_size == 75
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    n = len(datamodule.split("train"))
    assert n < 75 and datamodule.batch_size == n
    assert "fewer than data.batch_size=75" in caplog.text
