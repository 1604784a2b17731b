"""The one datamodule every model shares.

Small datasets are decoded once (through the on-disk cache), kept as a uint8 tensor on the training device and
batched by index: the DataLoader only yields index tensors, and ``on_after_batch_transfer`` gathers the images on
the device. ``device_resident=False`` switches to a standard DataLoader over CPU tensors for data that does not
fit on the device. Both paths yield the same ``Batch``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from genbench.data.batch import Batch
from genbench.data.cache import default_cache_dir, load_split
from genbench.data.errors import DataError
from genbench.data.sampler import IndexBatchSampler
from genbench.data.sources import ImageArrays, ImageSource

log = logging.getLogger(__name__)


class _Identity(Dataset):
    """Maps an index tensor to itself: the sampler already did the batching."""

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return index


class ResumableLoader(DataLoader):
    """The device-resident training loader, with the state Lightning saves in a checkpoint (it calls
    ``state_dict``/``load_state_dict`` on loaders that have them): the epoch and how many of its batches were
    trained, read from ``progress`` at save time. Loaded, it makes the sampler skip those batches, so a run
    resumed from a mid-epoch checkpoint sees exactly the batches an uninterrupted run would."""

    def __init__(self, *args, progress: Callable[[], tuple[int, int]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self._progress()
        return {"epoch": int(epoch), "batches": int(batches)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume_at(state["epoch"], state["batches"])


class _Samples(Dataset):
    """Per-sample access for the classic DataLoader path: (uint8 image, label, index)."""

    def __init__(self, arrays: ImageArrays) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int):
        return self.arrays.images[i], self.arrays.labels[i], i


class ImageDataModule(pl.LightningDataModule):
    """Serves one dataset's train split for training and its test split for validation and evaluation."""

    def __init__(
        self,
        name: str,
        source: Callable[..., ImageSource],
        root: str | None,
        image_size: int,
        channels: int,
        batch_size: int = 128,
        eval_batch_size: int = 500,
        download: bool = False,
        device_resident: bool = True,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.name = name
        self.source = source(root=root, image_size=image_size, download=download)
        if self.source.channels != channels:
            raise ValueError(
                f"data.channels={channels} but {name} images have {self.source.channels} channels"
            )
        self.image_size, self.channels = image_size, channels
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.device_resident, self.num_workers = device_resident, num_workers
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.seed = seed
        self._splits: dict[str, ImageArrays] = {}
        self._on_device: dict[tuple[str, str], torch.Tensor] = {}

    # -- data access shared with callbacks -------------------------------------------------------------------
    def split(self, name: str) -> ImageArrays:
        """The whole ``name`` split ('train' or 'test') as uint8 CPU tensors, decoded once."""
        if name not in self._splits:
            self._splits[name] = load_split(self.source, name, self.cache_dir)
            arrays = self._splits[name]
            expected = (self.channels, self.image_size, self.image_size)
            if len(arrays) and tuple(arrays.images.shape[1:]) != expected:
                raise DataError(
                    f"{self.name} {name} images have shape {tuple(arrays.images.shape[1:])}, expected {expected}"
                )
        return self._splits[name]

    def images(
        self, split: str, index: torch.Tensor | None = None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Float images in [0, 1] of ``split`` at ``index`` (all when None), gathered on ``device``."""
        store = self._device_store(split, torch.device(device))
        picked = store if index is None else store.index_select(0, index.to(store.device))
        return picked.float().div_(255.0)

    def _device_store(self, split: str, device: torch.device) -> torch.Tensor:
        key = (split, str(device))
        if key not in self._on_device:
            self._on_device[key] = self.split(split).images.to(device)
        return self._on_device[key]

    # -- Lightning hooks -----------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        for name in ("train", "test"):  # decode (and cache) once, on one process, before DDP ranks need it
            self.split(name)

    def setup(self, stage: str | None = None) -> None:
        train = self.split("train")
        if len(train) == 0:
            raise DataError(f"{self.name}: the train split has no images")
        if len(train) < self.batch_size:  # e.g. the 23-image frog sample at the paper's batch of 75
            log.warning(
                "%s: the train split has %d images, fewer than data.batch_size=%d: training on batches of %d "
                "(one batch per epoch)",
                self.name,
                len(train),
                self.batch_size,
                len(train),
            )
            self.batch_size = len(train)

    def _rank_info(self) -> tuple[int, int, torch.device]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1, torch.device("cpu")
        return trainer.global_rank, trainer.world_size, trainer.strategy.root_device

    def _loader(self, split: str, train: bool) -> DataLoader:
        rank, world, device = self._rank_info()
        arrays = self.split(split)
        batch_size = self.batch_size if train else self.eval_batch_size
        if self.device_resident:
            sampler = IndexBatchSampler(
                len(arrays),
                batch_size,
                shuffle=train,
                drop_last=train,
                seed=self.seed,
                rank=rank,
                world_size=world,
                device=lambda: self._rank_info()[2],
                epoch_source=lambda: self.trainer.current_epoch if self.trainer is not None else 0,
            )
            if not train:
                return DataLoader(
                    _Identity(), sampler=sampler, batch_size=None, num_workers=0, generator=self._loader_rng()
                )
            return ResumableLoader(
                _Identity(),
                sampler=sampler,
                batch_size=None,
                num_workers=0,
                generator=self._loader_rng(),
                progress=self._train_progress,
            )
        dataset = _Samples(arrays)
        if world > 1:
            sampler = DistributedSampler(dataset, world, rank, shuffle=train, seed=self.seed, drop_last=train)
        elif train:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(self.seed))
        else:
            sampler = SequentialSampler(dataset)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=self.num_workers > 0,
            generator=self._loader_rng(),
        )

    def _train_progress(self) -> tuple[int, int]:
        """(epoch, batches of it trained so far) when a checkpoint is saved."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def _loader_rng(self) -> torch.Generator:
        """A private generator: creating a DataLoader iterator draws a seed, and must not draw it from the global
        RNG, or when Lightning builds the iterator (which differs on a resumed run) would change the model's noise."""
        return torch.Generator().manual_seed(self.seed)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        if len(self.split("test")) == 0:
            return []
        return self._loader("test", train=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int) -> Batch:
        if isinstance(batch, torch.Tensor):  # device-resident path: an index tensor
            split = "train" if self.trainer is None or self.trainer.training else "test"
            store = self._device_store(split, batch.device)
            labels = self._device_labels(split, batch.device)
            # index_select: a gather several times faster than advanced indexing on large images
            return Batch(
                store.index_select(0, batch).float().div_(255.0), labels.index_select(0, batch), batch
            )
        image, label, index = batch
        return Batch(image.float().div_(255.0), label, index)

    def _device_labels(self, split: str, device: torch.device) -> torch.Tensor:
        key = (f"{split}/labels", str(device))
        if key not in self._on_device:
            self._on_device[key] = self.split(split).labels.to(device)
        return self._on_device[key]
