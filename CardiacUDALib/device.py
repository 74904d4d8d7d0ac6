"""The torch device a job runs on, from the user's ``--device`` word."""

from __future__ import annotations

import re

import torch

from CardiacUDALib.errors import CardiacUDAError

DEVICE_NAME = re.compile(r"cpu|cuda(:[0-9]+)?|mps")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an unavailable explicit choice is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise CardiacUDAError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CardiacUDAError(
            f"device {name!r} was asked for, but this PyTorch sees no CUDA GPU; use --device cpu"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CardiacUDAError(
            f"device {name!r} was asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s), "
            "numbered from 0"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CardiacUDAError("device 'mps' was asked for, but it is not available here; use --device cpu")
    return device
