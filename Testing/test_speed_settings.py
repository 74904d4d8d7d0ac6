"""The speed settings change how a step runs, never what it computes: ``prefetch`` (the next batches
drawn in a background thread), ``channels_last`` (NHWC memory order) and ``compile`` (torch.compile).
Their speed is measured by ``benchmarks/speed.py``, not here."""

from __future__ import annotations

import pytest
from conftest import tiny_request

from CardiacUDALib.checkpoint import load_checkpoint
from CardiacUDALib.inference import TrainedModel
from CardiacUDALib.training import train


def _losses(dataset, label_map, out_dir, **settings) -> list[float]:
    job = tiny_request(dataset, label_map, out_dir)
    job.overrides = {**job.overrides, "iterations": 4, **settings}
    return [entry["loss"] for entry in train(job).history["losses"]]


def test_prefetching_draws_exactly_the_batches_of_the_step(tiny_phantom, label_map, tmp_path):
    ahead = _losses(tiny_phantom, label_map, tmp_path / "ahead", prefetch=True)
    inline = _losses(tiny_phantom, label_map, tmp_path / "inline", prefetch=False)
    assert ahead == inline and len(ahead) == 4


def test_channels_last_computes_the_same_steps(tiny_phantom, label_map, tmp_path):
    plain = _losses(tiny_phantom, label_map, tmp_path / "plain")
    nhwc = _losses(tiny_phantom, label_map, tmp_path / "nhwc", channels_last=True)
    assert nhwc == pytest.approx(plain, rel=1e-4)


def test_a_compiled_run_trains_like_an_eager_one_and_its_checkpoint_loads_anywhere(
    tiny_phantom, label_map, tmp_path
):
    eager = _losses(tiny_phantom, label_map, tmp_path / "eager")
    compiled = _losses(tiny_phantom, label_map, tmp_path / "compiled", compile=True)
    assert compiled == pytest.approx(eager, rel=1e-3)
    checkpoint = tmp_path / "compiled/checkpoints/last.pt"
    keys = load_checkpoint(checkpoint).state["networks"]["segmenter"].keys()
    assert not any("_orig_mod" in key for key in keys)  # the plain network's names: loads without compile
    TrainedModel.load(checkpoint, "cpu")
