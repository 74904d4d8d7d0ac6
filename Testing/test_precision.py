"""bfloat16 autocast (``amp``) on CUDA and on CPUs that compute bfloat16 natively, float32 elsewhere.

Whether the CPU has AVX512-BF16 or AMX-BF16 is read from the CPU; ``CARDIACUDA_CPU_BFLOAT16`` forces the
answer, so that both paths run on any machine (on a CPU without native bfloat16, oneDNN emulates it,
about 12 times slower than float32 on the AVX2 machine here: the forced tests stay tiny).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import tiny_request

from CardiacUDALib.data import SliceBatch
from CardiacUDALib.device import (
    CPU_BFLOAT16_VARIABLE,
    bfloat16_autocast,
    cpu_has_native_bfloat16,
)
from CardiacUDALib.engine import run_job
from CardiacUDALib.jobs import SegmentJob
from CardiacUDALib.methods import get_method
from CardiacUDALib.methods.base import build_config
from CardiacUDALib.metrics import dice_coefficient
from CardiacUDALib.training import train

CPU = torch.device("cpu")
# Labels of bfloat16 against float32 inference of the phantom model (source_only, fast preset): the least
# Dice per structure and volume over phantom targets 2-9 was 0.976 / 0.943 / 0.893 for training seeds
# 0 / 1 / 2 (emulated bfloat16, AVX2, 2026-12-07); the test's volume (target 9) gave 0.976 / 0.992 / 0.996.
SAME_LABELS_DICE = 0.85


@pytest.fixture
def native_bfloat16(monkeypatch):
    """``set(True)`` / ``set(False)``: what the CPU is taken to have."""

    def force(present: bool) -> None:
        monkeypatch.setenv(CPU_BFLOAT16_VARIABLE, "1" if present else "0")

    return force


def test_the_cpu_is_asked_unless_the_variable_forces_the_answer(monkeypatch, native_bfloat16):
    monkeypatch.delenv(CPU_BFLOAT16_VARIABLE, raising=False)
    asked = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert cpu_has_native_bfloat16() is asked
    native_bfloat16(True)
    assert (
        cpu_has_native_bfloat16()
        and bfloat16_autocast(CPU, amp=True)
        and not bfloat16_autocast(CPU, amp=False)
    )
    native_bfloat16(False)
    assert not cpu_has_native_bfloat16() and not bfloat16_autocast(CPU, amp=True)
    assert not bfloat16_autocast(torch.device("mps"), amp=True)


def segment_events(checkpoint, cases, out_dir, amp: bool) -> tuple[list[np.ndarray], list[dict]]:
    events: list[dict] = []
    job = SegmentJob(checkpoint, cases, out_dir, "cpu", amp, flip_averaging=False, empty_without_heart=False)
    paths = run_job(job, events.append)["segmentations"]
    return [sitk.GetArrayFromImage(sitk.ReadImage(str(path))) for path in paths], events


def test_without_native_bfloat16_amp_changes_nothing_and_says_so(
    tiny_model, tiny_phantom, native_bfloat16, tmp_path
):
    native_bfloat16(False)
    cases = tiny_phantom.target[:1]
    with_amp, events = segment_events(tiny_model, cases, tmp_path / "amp", amp=True)
    without, _ = segment_events(tiny_model, cases, tmp_path / "fp32", amp=False)
    np.testing.assert_array_equal(with_amp[0], without[0])
    said = [event["message"] for event in events if event["event"] == "status"]
    assert said == [
        "computing in float32: this CPU has no native bfloat16 (AVX512-BF16 or AMX-BF16), so amp stays off"
    ]


def test_with_native_bfloat16_the_labels_are_those_of_float32(
    trained_source_model, phantom, label_map, native_bfloat16, tmp_path
):
    native_bfloat16(True)
    cases = phantom.target[9:]
    bfloat16, events = segment_events(
        trained_source_model.best_checkpoint, cases, tmp_path / "bf16", amp=True
    )
    float32, _ = segment_events(trained_source_model.best_checkpoint, cases, tmp_path / "fp32", amp=False)
    assert any("bfloat16 autocast on cpu" in event.get("message", "") for event in events)
    for value in label_map.values:
        reference = float32[0] == value
        assert reference.any()
        assert dice_coefficient(bfloat16[0] == value, reference) >= SAME_LABELS_DICE, value


def test_under_bfloat16_training_keeps_weights_losses_and_outputs_in_float32(label_map, native_bfloat16):
    """Only the networks' layers run in bfloat16: their outputs come back as float32 (losses, softmax,
    Dice, pseudo-labels and the EMA teacher are float32 arithmetic), and the weights stay float32."""
    native_bfloat16(True)
    torch.manual_seed(0)
    method_class = get_method("self_training")
    method = method_class(
        build_config(method_class, "fast", width=4, batch_size=2), label_map.num_classes, CPU
    )
    images = torch.rand(2, 1, 32, 32)
    labels = torch.randint(0, label_map.num_classes, (2, 32, 32))
    losses = method.train_step(SliceBatch(images, labels), SliceBatch(torch.rand(2, 1, 32, 32), None))
    assert all(np.isfinite(value) for value in losses.values())
    with method.autocast():
        inside = method.segmenter(images)
        bottleneck = method.segmenter.encode(images)[-1]  # a method of the network, not its forward
    assert bottleneck.dtype == torch.bfloat16  # the layers did run in bfloat16
    assert inside.dtype == torch.float32 and method.segment(images).dtype == torch.float32
    assert all(
        p.dtype == torch.float32 for network in method.networks().values() for p in network.parameters()
    )


def test_training_says_once_what_it_computes_in(tiny_phantom, label_map, native_bfloat16, tmp_path):
    native_bfloat16(False)
    events: list[dict] = []
    train(
        tiny_request(tiny_phantom, label_map, tmp_path, overrides={"iterations": 1, "batch_size": 2}),
        events.append,
    )
    said = [e["message"] for e in events if e["event"] == "status" and "computing in" in e["message"]]
    assert said == [
        "computing in float32: this CPU has no native bfloat16 (AVX512-BF16 or AMX-BF16), so amp stays off"
    ]
