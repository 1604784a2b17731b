"""genbench: train and benchmark generative models side by side."""

__version__ = "0.1.0"
