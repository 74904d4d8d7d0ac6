"""SLAug's location-scale remaps and saliency-balancing fusion: what each must do, and must leave alone."""

from __future__ import annotations

import pytest
import torch

from CardiacUDALib.location_scale import (
    BACKGROUND_THRESHOLD,
    bezier_remap,
    class_location_scale,
    global_location_scale,
    location_scale,
    saliency_balanced_fusion,
    saliency_map,
)


def _images_and_labels(batch: int = 4, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """A textured ring (class 1) around a disc (class 2) on a textured square (class 0), a zero border."""
    grid = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")).float()
    distance = ((grid - size / 2) ** 2).sum(0).sqrt()
    labels = (distance < size / 3).long() + (distance < size / 6).long()
    texture = 0.05 * torch.sin(grid[0] / 2) * torch.cos(grid[1] / 3)
    image = 0.3 + 0.2 * labels.float() + texture
    image[:4] = 0.0
    labels[:4] = 0
    return image.expand(batch, 1, size, size).clone(), labels.expand(batch, size, size).clone()


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_a_monotone_bezier_remap_keeps_the_order_and_the_ends_of_the_values():
    values = torch.linspace(0.1, 0.9, 500)
    for seed in range(10):
        remapped = bezier_remap(values, _generator(seed), reverse=False)
        assert torch.all(remapped[1:] >= remapped[:-1] - 1e-6)
        torch.testing.assert_close(remapped[[0, -1]], values[[0, -1]], atol=1e-3, rtol=0)


def test_a_reversed_remap_inverts_the_contrast_within_the_same_range():
    values = torch.linspace(0.1, 0.9, 500)
    for seed in range(10):
        remapped = bezier_remap(values, _generator(seed), reverse=True)
        assert torch.all(remapped[1:] <= remapped[:-1] + 1e-6)
        torch.testing.assert_close(remapped[[0, -1]], values[[-1, 0]], atol=1e-3, rtol=0)
    assert not torch.allclose(bezier_remap(values, _generator(0), False), values, atol=1e-3)


def test_location_scale_stays_in_0_1_and_keeps_the_middle_band_inside():
    values = torch.rand(2000, generator=_generator(1)) * 0.6 + 0.2
    for seed in range(20):
        moved = location_scale(values, _generator(seed))
        assert moved.min() >= 0 and moved.max() <= 1
        middle = (moved > 0) & (moved < 1)
        assert middle.float().mean() > 0.55  # the 20th-80th percentile band is never pushed out


def test_global_remap_changes_intensities_not_shape_and_a_seed_reproduces_it():
    images, _ = _images_and_labels()
    remapped = global_location_scale(images, _generator(2))
    assert remapped.shape == images.shape and remapped.min() >= 0 and remapped.max() <= 1
    assert not torch.allclose(remapped, images, atol=1e-3)
    torch.testing.assert_close(remapped, global_location_scale(images, _generator(2)))
    assert not torch.allclose(remapped, global_location_scale(images, _generator(3)))


def test_class_level_remaps_stay_inside_their_class_and_spare_the_empty_border():
    """Two images that differ only inside class 2 get the same remap outside it (same draws)."""
    images, labels = _images_and_labels(batch=1)
    changed = images.clone()
    changed[0, 0][labels[0] == 2] += 0.1
    first = class_location_scale(images, labels, _generator(4))
    second = class_location_scale(changed, labels, _generator(4))
    outside = (labels[0] != 2).expand_as(first[0])
    torch.testing.assert_close(first[0][outside], second[0][outside])
    assert not torch.allclose(first[0][~outside], second[0][~outside])
    border = images <= BACKGROUND_THRESHOLD
    torch.testing.assert_close(first[border], images[border])
    assert not torch.allclose(first, images, atol=1e-3)


def test_saliency_is_smooth_in_0_1_and_high_where_the_gradient_is():
    gradient = torch.zeros(2, 3, 72, 72)
    gradient[0, :, 8:20, 8:20] = 1.0
    gradient[1, :, 50:64, 40:60] = -2.0
    weight = saliency_map(gradient)
    assert weight.shape == (2, 1, 72, 72)
    assert weight.min() >= 0 and weight.max() <= 1 + 1e-6
    assert weight[0, 0, 14, 14] > 0.8 and weight[0, 0, 60, 60] < 0.2
    assert weight[1, 0, 57, 50] > 0.8 and weight[1, 0, 10, 10] < 0.2
    assert weight.diff(dim=-1).abs().max() < 0.3  # a hard edge would step by 1: the blend is smooth


def test_fusion_takes_the_global_view_where_salient_and_the_class_view_elsewhere():
    global_view, class_view = torch.ones(1, 1, 72, 72), torch.zeros(1, 1, 72, 72)
    gradient = torch.zeros(1, 1, 72, 72)
    gradient[0, 0, 30:42, 30:42] = 1.0
    fused = saliency_balanced_fusion(global_view, class_view, gradient)
    assert fused[0, 0, 36, 36] > 0.8 and fused[0, 0, 2, 2] < 0.2


@pytest.mark.parametrize("intensity", ["percentile_zscore", None])
def test_slaug_without_min_max_intensities_says_so(intensity):
    from CardiacUDALib.errors import CardiacUDAError
    from CardiacUDALib.methods import build_config, get_method

    method = get_method("slaug")
    with pytest.raises(CardiacUDAError, match="intensity=minmax"):
        method(build_config(method, intensity=intensity), 4, torch.device("cpu"))


def test_a_slaug_step_trains_on_both_views_and_moves_the_weights():
    from CardiacUDALib.data import SliceBatch
    from CardiacUDALib.methods import build_config, get_method

    torch.manual_seed(0)
    method_class = get_method("slaug")
    method = method_class(build_config(method_class, width=4, depth=2), 3, torch.device("cpu"))
    images, labels = _images_and_labels(batch=2)
    before = [parameter.detach().clone() for parameter in method.segmenter.parameters()]
    losses = method.train_step(SliceBatch(images, labels), None)
    assert losses["loss"] > 0 and all(torch.isfinite(torch.tensor(list(losses.values()))))
    moved = [not torch.equal(b, a) for b, a in zip(before, method.segmenter.parameters())]
    assert all(moved)
