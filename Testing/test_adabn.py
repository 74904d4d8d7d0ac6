"""AdaBN: BatchNorm statistics become the target's, nothing else changes, and it helps on the phantom."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import PHANTOM_SIZE, mean_dice, tiny_request
from torch import nn

from CardiacUDALib.checkpoint import load_checkpoint
from CardiacUDALib.errors import CardiacUDAError
from CardiacUDALib.jobs import TrainJob
from CardiacUDALib.methods import build_config, get_method
from CardiacUDALib.preprocess import PreprocessConfig
from CardiacUDALib.stages import adapt_batchnorm, batchnorm_layers
from CardiacUDALib.training import train

BATCHNORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def small_method(norm: str = "batch"):
    method_class = get_method("source_only")
    config = build_config(method_class, "fast", width=4, depth=2, norm=norm)
    torch.manual_seed(0)
    method = method_class(config, num_classes=4, device=torch.device("cpu"))
    for layer in batchnorm_layers(method):  # "source" statistics, far from the target's
        layer.running_mean.fill_(3.0)
        layer.running_var.fill_(9.0)
    return method


def target_slices() -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.normal(2.0, 1.5, size=(10, 1, 24, 24)) + np.linspace(0, 1, 24)).astype(np.float32)


def layer_inputs_in_the_statistics_pass(network: nn.Module, slices: np.ndarray, batch_size: int) -> dict:
    """Independently: every BatchNorm layer's inputs, all batches concatenated, BatchNorm normalising per batch."""
    captured: dict[nn.Module, list[np.ndarray]] = {}
    network = copy.deepcopy(network).eval()
    layers = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
    for layer in layers:
        layer.train()
        layer.register_forward_pre_hook(
            lambda module, inputs: captured.setdefault(module, []).append(inputs[0].numpy())
        )
    with torch.no_grad():
        for start in range(0, len(slices), batch_size):
            network(torch.from_numpy(slices[start : start + batch_size]))
    return {index: np.concatenate(captured[layer]).astype(np.float64) for index, layer in enumerate(layers)}


def test_running_statistics_equal_the_targets_per_channel_mean_and_variance():
    method, slices = small_method(), target_slices()
    expected = layer_inputs_in_the_statistics_pass(method.segmenter, slices, batch_size=4)
    assert adapt_batchnorm(method, slices, batch_size=4) == len(expected) == 10
    for index, layer in enumerate(batchnorm_layers(method)):
        inputs = expected[index]
        np.testing.assert_allclose(
            layer.running_mean.numpy(), inputs.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            layer.running_var.numpy(), inputs.var(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6
        )
    # the first layer's input does not depend on any normalisation: check it from the raw convolution too
    first_conv = method.segmenter.encoder.levels[0][0][0]
    with torch.no_grad():
        features = first_conv(torch.from_numpy(slices)).double()
    first = batchnorm_layers(method)[0]
    torch.testing.assert_close(
        first.running_mean.double(), features.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        first.running_var.double(), features.var(dim=(0, 2, 3), unbiased=False), rtol=1e-5, atol=1e-6
    )


def test_everything_but_batchnorm_statistics_stays_bit_identical_and_modes_are_restored():
    method = small_method()
    before = copy.deepcopy(method.segmenter.state_dict())
    adapt_batchnorm(method, target_slices())
    after = method.segmenter.state_dict()
    for name, tensor in before.items():
        if name.endswith(BATCHNORM_BUFFERS[:2]):
            assert not torch.equal(tensor, after[name]), name
        elif not name.endswith(BATCHNORM_BUFFERS[2]):
            assert torch.equal(tensor, after[name]), name
    assert not any(module.training for module in method.segmenter.modules())


def test_adabn_is_idempotent():
    method = small_method()
    adapt_batchnorm(method, target_slices())
    once = [layer.running_var.clone() for layer in batchnorm_layers(method)]
    adapt_batchnorm(method, target_slices())
    for first, second in zip(once, batchnorm_layers(method)):
        torch.testing.assert_close(first, second.running_var)


def test_a_network_without_batchnorm_gets_a_clear_message(tiny_phantom, label_map, tmp_path):
    with pytest.raises(CardiacUDAError, match="no BatchNorm layer"):
        adapt_batchnorm(small_method(norm="instance"), target_slices())
    request = tiny_request(tiny_phantom, label_map, tmp_path, stages=["adabn"])
    request.overrides = {**request.overrides, "norm": "instance"}
    with pytest.raises(CardiacUDAError, match="no BatchNorm layer"):
        train(request)


@pytest.mark.accuracy
def test_adabn_from_a_source_checkpoint_beats_source_only_on_the_phantom_target(
    phantom,
    phantom_test_targets,
    label_map,
    trained_source_model,
    source_only_target_dice,
    tmp_path,
    require_gain,
):
    request = TrainJob(
        method="adabn",
        out_dir=tmp_path / "adabn",
        source=phantom.source[:8],
        target=phantom.target,  # images only: target labels are never read for training
        label_map=label_map,
        preprocess=PreprocessConfig(size=PHANTOM_SIZE),
        overrides={"iterations": 0},
        initial_checkpoint=trained_source_model.best_checkpoint,
    )
    adapted = train(request)
    saved = load_checkpoint(adapted.best_checkpoint, expected_method="adabn")
    assert (
        saved.metadata["adabn"]["layers"] == 18 and saved.method_config["width"] == 8
    )  # architecture inherited
    with_adabn = mean_dice(adapted.best_checkpoint, phantom_test_targets, label_map, tmp_path / "bn")
    require_gain("mean Dice over source_only", with_adabn, source_only_target_dice, 0.02)
