"""Datasets in their real formats, served to every model by one datamodule."""

from genbench.data.batch import Batch
from genbench.data.datamodule import ImageDataModule
from genbench.data.errors import DataError
from genbench.data.sources import ImageArrays

__all__ = ["Batch", "DataError", "ImageArrays", "ImageDataModule"]
