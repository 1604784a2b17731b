"""Errors raised for missing or broken data, each naming the file and how to fix it."""


class DataError(RuntimeError):
    """Data is missing, truncated or malformed. The message names the path and the remedy."""
