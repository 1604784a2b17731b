"""Errors raised for missing or broken data, each naming the file and how to fix it."""

from genbench.errors import UserError


class DataError(UserError, RuntimeError):
    """Data is missing, truncated or malformed. The message names the path and the remedy."""
