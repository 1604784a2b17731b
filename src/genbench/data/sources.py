"""Dataset sources: each decodes one dataset's real on-disk format into uint8 tensors.

A source knows where its files live, how to fetch them (where that is possible) and how to split them. It knows
nothing about batching or devices: that is the datamodule's job. Every failure names the file and the remedy.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genbench.data.errors import DataError
from genbench.data.idx import read_images_and_labels
from genbench.progress import Progress

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


@dataclass
class ImageArrays:
    """A whole split in memory: images (N, C, H, W) uint8 and labels (N,) int64 (-1 where unlabelled)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")

    def __len__(self) -> int:
        return self.images.shape[0]


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (N, C, H, W) uint8 images to size x size with antialiased bilinear filtering."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(
        images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


class ImageSource(abc.ABC):
    """One dataset in its original format. Subclasses implement ``load`` and ``fingerprint``."""

    name: str
    channels: int
    has_labels: bool

    def __init__(self, root: str | Path | None, image_size: int, download: bool = False) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self.image_size = int(image_size)
        self.download = download

    @abc.abstractmethod
    def load(self, split: str) -> ImageArrays:
        """Decode ``split`` ('train' or 'test') into memory."""

    @abc.abstractmethod
    def fingerprint(self, split: str) -> str:
        """A string that changes whenever the decoded ``split`` would: files, sizes, settings."""

    def cache_key(self, split: str) -> str:
        digest = hashlib.sha1(self.fingerprint(split).encode()).hexdigest()[:16]
        return f"{self.name}-{split}-{self.image_size}px-{digest}"


def _file_fingerprint(paths: list[Path]) -> str:
    return ";".join(f"{p}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in paths)


class DigitsSource(ImageSource):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images): the offline default dataset.

    The data ships inside scikit-learn, so ``root`` and ``download`` are ignored. The split is a fixed
    permutation (seed 0): the first 80% train, the rest test.
    """

    name = "digits"
    channels = 1
    has_labels = True
    train_fraction = 0.8

    def load(self, split: str) -> ImageArrays:
        _check_split(split)
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8))[:, None]
        labels = torch.from_numpy(bunch.target.astype(np.int64))
        order = torch.from_numpy(np.random.default_rng(0).permutation(len(labels)))
        n_train = int(round(self.train_fraction * len(labels)))
        chosen = order[:n_train] if split == "train" else order[n_train:]
        return ImageArrays(resize_uint8(images[chosen], self.image_size), labels[chosen])

    def fingerprint(self, split: str) -> str:
        import sklearn

        return f"digits:{split}:{self.image_size}:sklearn{sklearn.__version__}"


class IDXSource(ImageSource):
    """MNIST-style datasets as the official IDX ``.gz`` files, in torchvision's layout ``<root>/<folder>/raw/``.

    The ``.gz`` files are read directly, so the root may be read-only. ``download=True`` fetches missing files
    from the mirrors torchvision lists (with its md5 checks).
    """

    channels = 1
    has_labels = True
    files = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }

    def __init__(self, root, image_size: int = 28, download: bool = False, folder: str = "MNIST") -> None:
        super().__init__(root, image_size, download)
        if folder not in ("MNIST", "FashionMNIST"):
            raise ValueError(f"folder must be 'MNIST' or 'FashionMNIST', got {folder!r}")
        self.folder = folder
        self.name = {"MNIST": "mnist", "FashionMNIST": "fashion_mnist"}[folder]

    @property
    def raw_dir(self) -> Path:
        if self.root is None:
            raise DataError(f"no data root set for {self.name}: set data.root or the GENBENCH_DATA variable")
        return self.root / self.folder / "raw"

    def _paths(self, split: str) -> list[Path]:
        _check_split(split)
        return [self.raw_dir / name for name in self.files[split]]

    def _ensure_files(self, split: str) -> list[Path]:
        paths = self._paths(split)
        missing = [p for p in paths if not p.is_file()]
        if missing and self.download:
            self._download(missing)
            missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataError(
                f"{self.name}: missing {', '.join(str(p) for p in missing)}. Put the official IDX .gz files in "
                f"{self.raw_dir} (torchvision layout), point data.root / GENBENCH_DATA at a folder holding "
                f"{self.folder}/raw/, or run with data.download=true where the network allows."
            )
        return paths

    def _download(self, missing: list[Path]) -> None:
        from torchvision import datasets
        from torchvision.datasets.utils import download_url

        dataset_cls = {"MNIST": datasets.MNIST, "FashionMNIST": datasets.FashionMNIST}[self.folder]
        md5s = dict(dataset_cls.resources)
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        for path in missing:
            errors = []
            for mirror in dataset_cls.mirrors:
                try:
                    log.info("downloading %s from %s", path.name, mirror)
                    download_url(mirror + path.name, str(self.raw_dir), path.name, md5s.get(path.name))
                    break
                except (OSError, RuntimeError) as exc:  # network down or checksum wrong: try the next mirror
                    errors.append(f"{mirror}: {exc}")
            else:
                raise DataError(f"could not download {path.name}: " + "; ".join(errors))

    def load(self, split: str) -> ImageArrays:
        images_path, labels_path = self._ensure_files(split)
        images, labels = read_images_and_labels(images_path, labels_path)
        images_t = torch.from_numpy(images.copy())[:, None]
        return ImageArrays(resize_uint8(images_t, self.image_size), torch.from_numpy(labels.astype(np.int64)))

    def fingerprint(self, split: str) -> str:
        return f"{self.name}:{split}:{self.image_size}:" + _file_fingerprint(self._ensure_files(split))


def _decode_rgb(path: Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8, compositing any alpha channel onto white."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "P"):
                rgba = img.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}. Replace or delete the file.") from exc


def _decode_folder(paths: list[Path], crop: int | None, size: int) -> torch.Tensor:
    """Decode, center-crop to ``crop`` (None: no crop) and resize many images in threads (PIL frees the GIL)."""

    def one(path: Path) -> np.ndarray:
        arr = _decode_rgb(path)
        if crop is not None:
            h, w = arr.shape[:2]
            if crop > min(h, w):
                raise DataError(f"{path} is {w}x{h}, smaller than the crop size {crop}")
            top, left = (h - crop) // 2, (w - crop) // 2
            arr = arr[top : top + crop, left : left + crop]
        return arr

    if not paths:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    chunks = []
    with (
        ThreadPoolExecutor(max_workers=4) as pool,
        Progress(f"decoding {paths[0].parent}", len(paths), unit="images") as progress,
    ):
        for start in range(0, len(paths), 512):  # resize in chunks: bounded memory for CelebA
            arrays = list(pool.map(one, paths[start : start + 512]))
            shapes = {a.shape for a in arrays}
            if len(shapes) > 1:
                raise DataError(
                    f"images under {paths[0].parent} differ in size ({sorted(shapes)[:3]}); set a crop"
                )
            batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
            chunks.append(resize_uint8(batch, size))
            progress.update(len(arrays))
    return torch.cat(chunks)


class CelebASource(ImageSource):
    """CelebA aligned faces as ``<root>/celeba/img_align_celeba/*.jpg``, center-cropped and resized.

    The official split comes from ``list_eval_partition.txt`` when present (0 train, 1 val, 2 test); images it
    does not list go to train, and without it every image is train. Attribute files are not needed.
    """

    name = "celeba"
    channels = 3
    has_labels = False

    def __init__(self, root, image_size: int = 64, download: bool = False, crop_size: int = 140) -> None:
        super().__init__(root, image_size, download)
        self.crop_size = crop_size

    @property
    def folder(self) -> Path:
        if self.root is None:
            raise DataError("no data root set for celeba: set data.root or the GENBENCH_DATA variable")
        return self.root / "celeba"

    def _images(self) -> list[Path]:
        image_dir = self.folder / "img_align_celeba"
        if not image_dir.is_dir():
            raise DataError(
                f"celeba: missing folder {image_dir}. Download img_align_celeba.zip and list_eval_partition.txt "
                "from the CelebA site (mmlab.ie.cuhk.edu.hk/projects/CelebA.html) and unpack them into "
                f"{self.folder}; automatic download is not offered (Google Drive quota)."
            )
        paths = sorted(image_dir.glob("*.jpg"))
        if not paths:
            raise DataError(f"celeba: no .jpg images in {image_dir}")
        return paths

    def _partition(self) -> dict[str, int]:
        path = self.folder / "list_eval_partition.txt"
        if not path.is_file():
            return {}
        table = {}
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(f"{path}:{line_no}: expected '<file> <0|1|2>', got {line!r}")
            table[parts[0]] = int(parts[1])
        return table

    def _split_paths(self, split: str) -> list[Path]:
        _check_split(split)
        partition = self._partition()
        wanted = {"train": (0,), "test": (2,)}[split]
        return [p for p in self._images() if partition.get(p.name, 0) in wanted]

    def load(self, split: str) -> ImageArrays:
        paths = self._split_paths(split)
        images = _decode_folder(paths, self.crop_size, self.image_size)
        return ImageArrays(images, torch.full((len(paths),), -1, dtype=torch.int64))

    def fingerprint(self, split: str) -> str:
        paths = self._split_paths(split)
        names = hashlib.sha1("\n".join(p.name for p in paths).encode()).hexdigest()
        return f"celeba:{split}:{self.image_size}:{self.crop_size}:{len(paths)}:{names}:{self.folder.stat().st_mtime}"


class FrogsSource(ImageSource):
    """Jon Shamir's frogs: 64x64 RGBA PNGs ``<root>/frogs/frog-<n>.png`` on white.

    Split as in the incremental-GLO report: sorted by frog number, the first ``n_train`` (6,000) train, the rest
    test. With fewer images (the 23-image sample) the test split is empty and a warning says so.
    """

    name = "frogs"
    channels = 3
    has_labels = False
    _number = re.compile(r"(\d+)")

    def __init__(self, root, image_size: int = 64, download: bool = False, n_train: int = 6000) -> None:
        super().__init__(root, image_size, download)
        self.n_train = n_train

    def _all_paths(self) -> list[Path]:
        if self.root is None:
            raise DataError("no data root set for frogs: set data.root or the GENBENCH_DATA variable")
        folder = self.root / "frogs"
        paths = list(folder.glob("*.png")) if folder.is_dir() else []
        if not paths:
            raise DataError(
                f"frogs: no PNG images in {folder}. Fetch data-64/ of github.com/jonshamir/frog-dataset into "
                f"{folder}, keeping the file names (frog-<n>.png)."
            )

        def number(p: Path) -> int:
            match = self._number.search(p.stem)
            if match is None:
                raise DataError(f"frogs: {p} has no frog number in its name (expected frog-<n>.png)")
            return int(match.group(1))

        return sorted(paths, key=number)

    def _split_paths(self, split: str) -> list[Path]:
        _check_split(split)
        paths = self._all_paths()
        if split == "test" and len(paths) <= self.n_train:
            log.warning(
                "frogs: only %d images, all in train (n_train=%d); the test split is empty",
                len(paths),
                self.n_train,
            )
        return paths[: self.n_train] if split == "train" else paths[self.n_train :]

    def load(self, split: str) -> ImageArrays:
        paths = self._split_paths(split)
        images = _decode_folder(paths, None, self.image_size)
        return ImageArrays(images, torch.full((len(paths),), -1, dtype=torch.int64))

    def fingerprint(self, split: str) -> str:
        return f"frogs:{split}:{self.image_size}:{self.n_train}:" + _file_fingerprint(
            self._split_paths(split)
        )
