"""Appearance augmentation (GIN, IPA): what each must do to an image, and what it must leave alone."""

from __future__ import annotations

import pytest
import torch

from CardiacUDALib.appearance import (
    appearance_views,
    pseudo_correlation_views,
    random_intensity_network,
    smooth_blend_map,
    view_consistency_loss,
)
from CardiacUDALib.data import SliceBatch
from CardiacUDALib.errors import CardiacUDAError
from CardiacUDALib.methods.base import build_config
from CardiacUDALib.methods.registry import get_method


def _images(batch: int = 4, channels: int = 1, size: int = 48) -> torch.Tensor:
    """Piecewise-constant 'anatomy': a bright disc on a darker square on background, per image."""
    grid = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")).float()
    distance = ((grid - size / 2) ** 2).sum(0).sqrt()
    image = 0.2 * (distance < size / 2.5).float() + 0.6 * (distance < size / 5).float()
    return image.expand(batch, channels, size, size).clone()


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_gin_changes_contrast_keeps_shape_and_norm_and_a_seed_reproduces_it():
    images = _images()
    remapped = random_intensity_network(images, _generator(1))
    assert remapped.shape == images.shape and torch.isfinite(remapped).all()
    assert not torch.allclose(remapped, images, atol=1e-3)
    torch.testing.assert_close(
        remapped.flatten(1).norm(dim=1), images.flatten(1).norm(dim=1), rtol=1e-3, atol=1e-3
    )
    torch.testing.assert_close(remapped, random_intensity_network(images, _generator(1)))
    assert not torch.allclose(remapped, random_intensity_network(images, _generator(2)))


def test_gin_gives_every_image_of_a_batch_its_own_network():
    remapped = random_intensity_network(_images(batch=2), _generator(3))
    assert not torch.allclose(remapped[0], remapped[1], atol=1e-4)


def test_gin_remaps_intensities_locally_so_each_uniform_region_stays_uniform():
    """4 layers of kernels up to 3x3 see 9x9 pixels: deep inside a uniform region every pixel gets one
    value, so the anatomy's regions survive (only their contrasts change)."""
    images = _images(batch=6)
    inside = (
        torch.nn.functional.max_pool2d((images[:1] != 0.8).float(), 9, 1, 4)[0, 0] == 0
    )  # 4 px inside the disc
    for seed in range(5):
        remapped = random_intensity_network(images, _generator(seed))
        for index in range(len(images)):
            assert remapped[index, 0][inside].std() < 1e-4 * remapped[index].abs().max()


def test_the_blend_map_is_smooth_in_0_1_and_spans_it():
    blend = smooth_blend_map(3, 96, 80, _generator(4), torch.zeros(1))
    assert blend.shape == (3, 1, 96, 80)
    assert blend.min() >= 0 and blend.max() <= 1
    assert torch.allclose(blend.amin(dim=(1, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(blend.amax(dim=(1, 2, 3)), torch.ones(3), atol=1e-4)
    assert (blend[..., 1:, :] - blend[..., :-1, :]).abs().max() < 0.15  # no jumps between neighbours


def test_ipa_views_are_complementary_blends_of_the_same_two_gin_views():
    images = _images()
    first, second = pseudo_correlation_views(images, _generator(5))
    generator = _generator(5)
    g1 = random_intensity_network(images, generator)
    g2 = random_intensity_network(images, generator)
    torch.testing.assert_close(first + second, g1 + g2)  # b g1 + (1-b) g2 + (1-b) g1 + b g2
    assert not torch.allclose(first, second)


def test_appearance_views_count_and_unknown_names():
    images = _images()
    assert appearance_views(images, "none", _generator())[0] is images
    assert len(appearance_views(images, "gin", _generator())) == 1
    assert len(appearance_views(images, "gin_ipa", _generator())) == 2
    with pytest.raises(ValueError, match="unknown appearance 'randconv'"):
        appearance_views(images, "randconv", _generator())


def test_consistency_is_the_mean_kl_to_the_views_average_and_zero_when_views_agree():
    logits = torch.randn(2, 4, 8, 8, generator=_generator(6))
    assert view_consistency_loss([logits, logits.clone()]).abs() < 1e-6
    assert view_consistency_loss([logits]) == 0
    # one pixel, two classes: p = (0.5, 0.5), q = (0.9, 0.1), average m = (0.7, 0.3)
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])
    views = [probabilities.log().view(1, 2, 1, 1) for probabilities in (p, q)]
    m = (p + q) / 2
    expected = sum((m * (m / view).log()).sum() / 2 for view in (p, q)) / 2  # mean over views and classes
    torch.testing.assert_close(view_consistency_loss(views), expected)


@pytest.mark.parametrize("key", ["varda", "pnp_adanet", "cisfa"])
def test_every_method_gets_single_view_appearance_on_its_source_branch_from_the_engine(key):
    method_class = get_method(key)
    method = method_class(build_config(method_class, "fast", appearance="gin"), 4, torch.device("cpu"))
    labels = torch.randint(4, (4, 48, 48))
    source = SliceBatch(_images(), labels)
    torch.manual_seed(3)
    first = method.with_appearance(source)
    torch.manual_seed(3)
    again = method.with_appearance(source)
    assert first.images.shape == source.images.shape and not torch.allclose(first.images, source.images)
    assert torch.equal(first.labels, labels)
    torch.testing.assert_close(first.images, again.images)  # the engine's per-step seed reproduces it


def test_methods_without_their_own_views_refuse_the_multi_view_appearances():
    varda = get_method("varda")
    for appearance in ("gin_ipa", "slaug"):
        with pytest.raises(CardiacUDAError, match=f"cannot use appearance '{appearance}'.*none, gin"):
            varda(build_config(varda, "fast", appearance=appearance), 4, torch.device("cpu"))


def test_source_only_applies_its_appearances_itself_so_the_engine_leaves_its_batch_alone():
    source_only = get_method("source_only")
    method = source_only(build_config(source_only, "fast", appearance="gin"), 4, torch.device("cpu"))
    source = SliceBatch(_images(), torch.zeros(4, 48, 48, dtype=torch.long))
    assert method.with_appearance(source) is source
