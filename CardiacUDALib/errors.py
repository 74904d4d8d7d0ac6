"""Errors a user can act on.

The CLI and the worker print the message of a :class:`CardiacUDAError` without a traceback, so each
message must say what is wrong, with which file or value, and what to do about it.
"""


class CardiacUDAError(Exception):
    """Base class of every error whose message is meant for the user."""


class InputDataError(CardiacUDAError):
    """An input image, label map or file list cannot be used as given."""


class CheckpointError(CardiacUDAError):
    """A checkpoint or weights file cannot be loaded (missing, corrupt, other method, newer format)."""


class OutputError(CardiacUDAError):
    """An output cannot be written: the disk is full, the name is too long, no permission."""
