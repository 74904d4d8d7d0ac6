"""The registry of adaptation methods: a short key -> the method class."""

from __future__ import annotations

from CardiacUDALib.errors import CardiacUDAError
from CardiacUDALib.methods.base import AdaptationMethod

METHODS: dict[str, type[AdaptationMethod]] = {}


def register_method(method: type[AdaptationMethod]) -> type[AdaptationMethod]:
    """Class decorator: make ``method`` available under ``method.key``."""
    if method.key in METHODS:
        raise ValueError(f"method key {method.key!r} registered twice")
    METHODS[method.key] = method
    return method


def get_method(key: str) -> type[AdaptationMethod]:
    if key not in METHODS:
        raise CardiacUDAError(f"unknown method {key!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[key]
