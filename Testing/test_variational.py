"""The variational family (varda, uda_vae_pp, cmevae): its losses, estimators, memory, and a phantom run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TEST_SEED, mean_dice, torch_threads, train_fast_on_phantom
from scipy import stats

from CardiacUDALib.data import SliceBatch
from CardiacUDALib.losses.variational import (
    class_balanced_cross_entropy,
    gaussian_kernel_discrepancy,
    gaussian_kl,
    jensen_shannon_mi,
    margin_prototype_contrast,
)
from CardiacUDALib.methods import build_config, get_method
from CardiacUDALib.nets.prototype_memory import PrototypeMemory
from CardiacUDALib.nets.structure_mi import StructureMIEstimator

VARIATIONAL = ("varda", "uda_vae_pp", "cmevae")


def small_method(key: str, **overrides):
    method_class = get_method(key)
    config = build_config(
        method_class, "fast", width=4, reconstruction_width=4, depth=3, crop_size=32, **overrides
    )
    torch.manual_seed(0)
    return method_class(config, num_classes=4, device=torch.device("cpu"))


def random_batches(size: int = 40, batch: int = 4) -> tuple[SliceBatch, SliceBatch]:
    generator = torch.Generator().manual_seed(1)
    labels = torch.zeros(batch, size, size, dtype=torch.long)
    labels[:, 8:24, 8:24] = 2
    labels[:, 10:20, 12:22] = 1
    labels[:, 20:30, 20:34] = 3
    source = SliceBatch(
        labels[:, None].float() / 3 + 0.1 * torch.rand(batch, 1, size, size, generator=generator), labels
    )
    return source, SliceBatch(torch.rand(batch, 1, size, size, generator=generator))


# ---- losses -------------------------------------------------------------------------------------


def test_kernel_discrepancy_is_zero_for_identical_posteriors_and_grows_with_a_mean_shift():
    generator = torch.Generator().manual_seed(0)
    mean = torch.rand(4, 3, 8, 8, generator=generator) * 2 - 1
    log_variance = torch.rand(4, 3, 8, 8, generator=generator) * 2 - 1
    same = gaussian_kernel_discrepancy(mean, log_variance, mean, log_variance, pool=4)
    assert abs(same.item()) < 1e-4
    values = [
        gaussian_kernel_discrepancy(mean, log_variance, mean + shift, log_variance, pool=4).item()
        for shift in (0.1, 0.3, 1.0, 3.0)
    ]
    assert values[0] > 1e-3 and all(a < b for a, b in zip(values, values[1:])), values


def test_kernel_discrepancy_is_the_integrated_squared_difference_of_the_gaussian_mixtures():
    """Eq. 9-10 checked element by element: k(a, b) = integral of N(mu_a, s_a) N(mu_b, s_b) = N(mu_a; mu_b, s_a + s_b)."""
    generator = torch.Generator().manual_seed(2)
    source = (
        torch.randn(3, 2, 4, 4, generator=generator),
        torch.rand(3, 2, 4, 4, generator=generator) * 2 - 1,
    )
    target = (
        torch.randn(2, 2, 4, 4, generator=generator),
        torch.rand(2, 2, 4, 4, generator=generator) * 2 - 1,
    )

    def pooled(mean, log_variance):  # 2x2 blocks of independent Gaussians: mean of means, variance / 4
        def blocks(values):
            return (
                values.reshape(len(values), 2, 2, 2, 2, 2)
                .mean(dim=(3, 5))
                .reshape(len(values), -1)
                .double()
                .numpy()
            )

        return blocks(mean), blocks(log_variance.exp()) / 4

    def mean_kernel(a, b):
        (mean_a, var_a), (mean_b, var_b) = a, b
        return np.mean(
            [
                stats.norm.pdf(mean_a[i], mean_b[j], np.sqrt(var_a[i] + var_b[j])).sum()
                for i in range(len(mean_a))
                for j in range(len(mean_b))
            ]
        )

    s, t = pooled(*source), pooled(*target)
    expected = mean_kernel(s, s) + mean_kernel(t, t) - 2 * mean_kernel(s, t)
    assert gaussian_kernel_discrepancy(*source, *target, pool=2).item() == pytest.approx(expected, rel=1e-4)


def test_kl_matches_the_closed_form():
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(2, 5, 6, 6, generator=generator)
    log_variance = torch.rand(2, 5, 6, 6, generator=generator) * 2 - 1
    posterior = torch.distributions.Normal(mean, (0.5 * log_variance).exp())
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(posterior, prior).mean()
    torch.testing.assert_close(gaussian_kl(mean, log_variance), expected)
    assert gaussian_kl(torch.zeros(3), torch.zeros(3)).item() == 0.0  # the posterior is the prior


def test_class_balanced_cross_entropy_averages_the_present_classes_means():
    logits = torch.randn(2, 4, 5, 5)
    labels = torch.randint(0, 3, (2, 5, 5))  # class 3 absent
    per_pixel = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = torch.stack([per_pixel[labels == c].mean() for c in range(3)]).mean()
    torch.testing.assert_close(class_balanced_cross_entropy(logits, labels), expected)


def test_margin_contrast_prefers_embeddings_near_their_class_and_the_margin_makes_it_stricter():
    memory = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    memory_classes = torch.tensor([0, 0, 1])
    near = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05]]), dim=1)
    far = torch.nn.functional.normalize(torch.tensor([[0.1, 1.0]]), dim=1)
    classes = torch.tensor([0])

    def loss(anchors, margin):
        return margin_prototype_contrast(anchors, classes, memory, memory_classes, margin, 0.1)

    assert loss(near, 0.0) < loss(far, 0.0)
    assert loss(near, 0.4) > loss(near, 0.0)
    assert margin_prototype_contrast(near, classes, memory[:0], memory_classes[:0], 0.4, 0.1).item() == 0.0


# ---- mutual information --------------------------------------------------------------------------


def toy_pairs(generator: torch.Generator, batch: int = 8, size: int = 16) -> tuple[list, list]:
    """Segmentation logits with one random square of a random class per slice, and images showing that
    square with a class-specific texture (horizontal stripes, vertical stripes, checkerboard)."""
    rows, columns = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    rows, columns = rows // 2, columns // 2  # stripes 2 pixels wide: still visible at 1/2 scale
    textures = torch.stack([torch.zeros(size, size), rows % 2, columns % 2, (rows + columns) % 2]).float()
    labels = torch.zeros(batch, size, size, dtype=torch.long)
    for index in range(batch):
        top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        labels[index, top : top + size // 2, left : left + size // 2] = int(
            torch.randint(1, 4, (1,), generator=generator)
        )
    logits = 4.0 * torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    images = 0.5 + 0.4 * textures.expand(batch, -1, -1, -1).gather(1, labels[:, None])

    def pyramid(maps):
        return [maps, torch.nn.functional.avg_pool2d(maps, 2), torch.nn.functional.avg_pool2d(maps, 4)]

    return pyramid(logits), pyramid(images)


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: extra threads only contend (the test machine has 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads(1))
    yield
    torch.set_num_threads(threads)


@pytest.mark.accuracy
def test_mutual_information_estimate_is_higher_for_paired_than_for_shuffled_inputs(require_gain):
    torch.manual_seed(TEST_SEED)
    generator = torch.Generator().manual_seed(TEST_SEED)
    estimator = StructureMIEstimator(num_classes=4, image_channels=1, grid=4)
    optimizer = torch.optim.Adam(estimator.parameters(), lr=3e-3)
    for _ in range(100):
        estimate = estimator(*toy_pairs(generator))
        loss = -(estimate.global_mi + estimate.local_mi)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    segmentation, images = toy_pairs(generator)
    shuffled = [scale[torch.randperm(len(scale), generator=generator)] for scale in toy_pairs(generator)[1]]
    with torch.no_grad():
        paired, unpaired = estimator(segmentation, images), estimator(segmentation, shuffled)
    require_gain("global MI, paired over shuffled", paired.global_mi, unpaired.global_mi, 0.5)
    require_gain("local MI, paired over shuffled", paired.local_mi, unpaired.local_mi, 0.03)
    # a critic that cannot tell pairs from non-pairs (T = 0) scores -2 log 2
    assert jensen_shannon_mi(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(-2 * math.log(2))


# ---- memory bank ---------------------------------------------------------------------------------


def test_memory_bank_keeps_its_size_and_replaces_the_sample_least_similar_to_the_prototype():
    torch.manual_seed(0)
    memory = PrototypeMemory(num_classes=2, dimension=3, capacity=5, momentum=0.9)
    memory.update(1, torch.randn(5, 3))
    assert memory.counts.tolist() == [0, 5] and memory.samples.shape == (2, 5, 3)
    for _ in range(4):
        before = memory.samples[1].clone()
        new = torch.nn.functional.normalize(torch.randn(1, 3), dim=1)
        old_prototype = memory.prototypes[1].clone()
        expected_prototype = torch.nn.functional.normalize(0.9 * old_prototype + 0.1 * new[0], dim=0)
        replaced = int((before @ expected_prototype).argmin())
        memory.update(1, new)
        torch.testing.assert_close(memory.prototypes[1], expected_prototype)
        torch.testing.assert_close(memory.samples[1, replaced], new[0])
        kept = [slot for slot in range(5) if slot != replaced]
        assert torch.equal(memory.samples[1, kept], before[kept])
    memory.update(1, torch.randn(20, 3))
    assert memory.counts.tolist() == [0, 5] and memory.samples.shape == (2, 5, 3)
    vectors, valid, classes = memory.entries()
    assert valid.tolist() == [[False] * 6, [True] * 6] and classes[1].tolist() == [1] * 6
    torch.testing.assert_close(vectors[1, 5], memory.prototypes[1])


# ---- the methods ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", VARIATIONAL)
def test_sampling_is_off_at_test_time_and_on_in_training(key):
    method = small_method(key)
    images = torch.rand(2, 1, 40, 40)
    method.eval_mode()
    first, second = method.segment(images), method.segment(images)
    assert first.shape == (2, 4, 40, 40) and torch.equal(first, second)
    latents = method.network(images).latents
    assert all(torch.equal(latent.sample, latent.mean) for latent in latents)
    method.train_mode()
    assert not torch.equal(method.network(images).latents[0].sample, method.network(images).latents[0].sample)


@pytest.mark.parametrize("key", VARIATIONAL)
def test_a_training_step_crops_trains_and_keeps_its_state(key):
    method = small_method(key)
    source, target = random_batches()
    method.train_mode()
    losses = method.train_step(source, target)
    expected = {"loss", "segmentation", "reconstruction", "kl"}
    assert expected <= set(losses) and all(math.isfinite(value) for value in losses.values())
    assert losses["loss"] == pytest.approx(
        sum(value for name, value in losses.items() if name != "loss"), rel=1e-4
    )
    images, labels = method.random_crop(source.labels[:, None].float(), source.labels)
    assert images.shape[-2:] == (32, 32) and torch.equal(images[:, 0].long(), labels)
    restored = small_method(key)
    restored.load_state_dict(method.state_dict())
    method.eval_mode(), restored.eval_mode()
    assert torch.equal(method.segment(target.images), restored.segment(target.images))


def test_cmevae_memory_is_filled_from_the_source_and_saved_with_the_model():
    method = small_method("cmevae", memory_capacity=6)
    source, target = random_batches()
    method.train_mode()
    for _ in range(3):
        method.train_step(source, target)
    for memory in method.contrast.memories:
        assert memory.counts.tolist() == [6, 6, 6, 6] and memory.has_prototype.all()
    state = method.state_dict()["networks"]["contrast"]
    assert any(name.endswith("samples") for name in state)


def test_uda_vae_pp_without_smie_is_the_ablation():
    with_smie, without = small_method("uda_vae_pp"), small_method("uda_vae_pp", smie=False)
    assert "estimators" in with_smie.networks() and "estimators" not in without.networks()
    assert with_smie.network.sequential and not small_method("varda").network.sequential
    source, target = random_batches()
    assert "mutual_information" in with_smie.train_step(source, target)
    assert "mutual_information" not in without.train_step(source, target)


def test_learning_rate_falls_by_a_tenth_every_epoch():
    method = small_method("varda", iterations_per_epoch=10)
    assert [method.learning_rate_factor(step) for step in (0, 9, 10, 25)] == pytest.approx([1, 1, 0.9, 0.81])
    assert get_method("varda").presets["paper"] == {}  # paper defaults: 160 crops, minmax intensity, batch 12
    paper = build_config(get_method("uda_vae_pp"), "paper")
    assert (paper.crop_size, paper.intensity, paper.batch_size, paper.learning_rate) == (
        160,
        "minmax",
        12,
        1e-4,
    )


# ---- the phantom ---------------------------------------------------------------------------------


@pytest.mark.accuracy
@pytest.mark.parametrize("key", ["varda", "uda_vae_pp", "cmevae"])
def test_fast_run_beats_source_only_on_the_phantom_target(
    key, phantom, phantom_test_targets, label_map, source_only_target_dice, tmp_path, require_gain
):
    adapted = train_fast_on_phantom(key, phantom, label_map, tmp_path / key, iterations=160, batch_size=4)
    adapted_dice = mean_dice(adapted.best_checkpoint, phantom_test_targets, label_map, tmp_path / "adapted")
    require_gain("mean Dice over source_only", adapted_dice, source_only_target_dice, 0.015)
