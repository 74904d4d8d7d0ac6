"""The torch device a job runs on, from the user's ``--device`` word, and whether it computes in bfloat16."""

from __future__ import annotations

import os
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


# "1" or "0" replaces the CPU's answer (the tests run both paths on any machine); unset: ask the CPU.
CPU_BFLOAT16_VARIABLE = "CARDIACUDA_CPU_BFLOAT16"


def cpu_has_native_bfloat16() -> bool:
    """True when the CPU computes bfloat16 natively: AVX512-BF16 or AMX-BF16, as its CPUID reports them
    (through torch's cpuinfo); elsewhere oneDNN would emulate bfloat16, slower than float32."""
    forced = os.environ.get(CPU_BFLOAT16_VARIABLE)
    if forced in ("0", "1"):
        return forced == "1"
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def bfloat16_autocast(device: torch.device, amp: bool) -> bool:
    """Whether ``amp`` turns bfloat16 autocast on: on CUDA, and on a CPU with native bfloat16."""
    return amp and (device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bfloat16()))


def precision_message(device: torch.device, amp: bool) -> str:
    """The log line that says what the networks compute in (one per job)."""
    if bfloat16_autocast(device, amp):
        return (
            f"computing in bfloat16 autocast on {device.type} (amp; --set amp=false or --no-amp for float32)"
        )
    if not amp:
        return "computing in float32 (amp off)"
    if device.type == "cpu":
        return "computing in float32: this CPU has no native bfloat16 (AVX512-BF16 or AMX-BF16), so amp stays off"
    return f"computing in float32: amp is not used on {device.type}"
