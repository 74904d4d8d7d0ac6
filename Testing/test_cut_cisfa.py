"""Contrastive translation (``cut_seg``, ``cisfa``): the losses compute what the papers say, the adversarial
sign is right, the lazily built heads survive a checkpoint, and translation helps on the phantom."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import TEST_SEED, mean_dice, tiny_request, train_fast_on_phantom
from scipy.stats import wasserstein_distance

from CardiacUDALib.benchmark.report import write_translation_grid
from CardiacUDALib.benchmark.splits import DataSplit
from CardiacUDALib.data import SliceBatch
from CardiacUDALib.inference import TrainedModel, translate_cases
from CardiacUDALib.io import load_case
from CardiacUDALib.losses.contrastive import (
    foreground_weights,
    nt_xent_loss,
    patch_nce_loss,
    patch_nce_terms,
)
from CardiacUDALib.methods import build_config, get_method
from CardiacUDALib.methods.contrastive_translation import to_signed
from CardiacUDALib.nets.translation import labels_at_locations
from CardiacUDALib.preprocess import PreprocessConfig, prepare_volume
from CardiacUDALib.training import train

SIZE = 48


def small_method(key: str, seed: int = 0, **overrides: object):
    method_class = get_method(key)
    torch.manual_seed(seed)
    return method_class(build_config(method_class, "fast", **overrides), 4, torch.device("cpu"))


def batches(seed: int = 0) -> tuple[SliceBatch, SliceBatch]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.zeros(4, SIZE, SIZE, dtype=torch.long)
    labels[:, 12:36, 12:36] = torch.randint(1, 4, (4, 1, 1), generator=generator)
    source = SliceBatch(0.3 + 0.4 * (labels > 0).float()[:, None], labels)
    target = SliceBatch(torch.rand(4, 1, SIZE, SIZE, generator=generator))
    return source, target


def test_patch_nce_equals_a_hand_computed_value():
    queries = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]])
    keys = torch.tensor([[[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]]])
    temperature = 0.5
    # q_p . k_n for every key n; the positive is n = p, the negatives the other keys of the same image
    dots = [[0.8, 0.0, 1.0], [0.6, 1.0, 0.0], [0.96, 0.8, 0.6]]
    expected = [
        -math.log(math.exp(row[p] / temperature) / sum(math.exp(d / temperature) for d in row))
        for p, row in enumerate(dots)
    ]
    terms = patch_nce_terms(queries, keys, temperature)
    torch.testing.assert_close(terms, torch.tensor([expected]))
    torch.testing.assert_close(patch_nce_loss(queries, keys, temperature), torch.tensor(sum(expected) / 3))
    # the keys are anchors, not targets: no gradient reaches them
    keys.requires_grad_(True)
    patch_nce_loss(queries.requires_grad_(True), keys, temperature).backward()
    assert keys.grad is None and queries.grad is not None


def test_label_weighting_changes_only_the_foreground_terms():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 2:6, 2:6] = 2  # foreground square; at 4x4 it is the centre 2x2
    locations = torch.tensor([0, 5, 6, 15, 10])  # flat positions on the 4x4 feature map
    patch_labels = labels_at_locations(labels, (4, 4), locations)
    assert patch_labels.tolist() == [[0, 2, 2, 0, 2]] * 2
    weights = foreground_weights(patch_labels, 2.0)
    torch.manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(2, 5, 3), dim=-1)
    keys = torch.nn.functional.normalize(torch.randn(2, 5, 3), dim=-1)
    terms = patch_nce_terms(queries, keys, 0.2)
    weighted = patch_nce_loss(queries, keys, 0.2, weights)
    foreground = patch_labels > 0
    torch.testing.assert_close(weighted * 10, terms[~foreground].sum() + 2 * terms[foreground].sum())
    torch.testing.assert_close(
        patch_nce_loss(queries, keys, 0.2, foreground_weights(patch_labels, 1.0)), terms.mean()
    )


def test_nt_xent_positives_are_the_intended_pairs():
    temperature = 0.5
    first = torch.eye(4)[:3] * 3.0  # three orthogonal directions (scale is normalised away)
    loss = nt_xent_loss(first, first.clone(), temperature)
    # each of the 6 anchors: its partner at cosine 1, the 4 other views at cosine 0
    expected = -math.log(math.exp(1 / temperature) / (math.exp(1 / temperature) + 4))
    torch.testing.assert_close(loss, torch.tensor(expected))
    shuffled = nt_xent_loss(first, first[[1, 2, 0]], temperature)
    assert shuffled > loss + 1.0
    # partners are (first[i], second[i]) both ways: pairing first[i] with second[i] is what lowers the loss
    second = first + 0.1 * torch.randn(3, 4)
    second.requires_grad_(True)
    nt_xent_loss(first, second, temperature).backward()
    step = second - 0.5 * second.grad
    assert nt_xent_loss(first, step, temperature) < nt_xent_loss(first, second, temperature)


@pytest.mark.accuracy
@pytest.mark.parametrize("key", ["cut_seg", "cisfa"])
def test_a_generator_step_raises_the_discriminators_score_of_its_fakes(key, require_gain):
    # only the adversarial term: this checks its sign (a wrong real/fake convention lowers the score)
    method = small_method(key, TEST_SEED, nce_weight=0.0, **({"two_stage": True} if key == "cut_seg" else {}))
    method.train_mode()
    source, target = batches(TEST_SEED)
    source_images, target_images = to_signed(source.images), to_signed(target.images)

    def fake_score() -> float:
        with torch.no_grad():
            return method.image_discriminator(method.generator(source_images)).mean().item()

    before = fake_score()
    if key == "cut_seg":
        method.generator_step(source_images, target_images, source.labels)
    else:
        method.generator_step(source_images, source.labels)
    require_gain("discriminator score of the fakes", fake_score(), before, 0.05)


@pytest.mark.parametrize("key", ["cut_seg", "cisfa"])
def test_projection_heads_are_built_with_the_networks_optimised_and_load_before_any_batch(key):
    method = small_method(key)
    assert method.patch_sampler.built and "patch_sampler" in method.optimizers()
    method.train_mode()
    method.train_step(*batches())
    heads_optimizer = method.optimizers()["patch_sampler"]
    optimised = {id(p) for group in heads_optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in method.patch_sampler.parameters()} and optimised
    assert all(heads_optimizer.state[p] for p in method.patch_sampler.parameters())  # it has taken a step
    state = method.state_dict()
    restarted = small_method(key)
    restarted.load_state_dict(state)  # no batch seen yet: the heads are built from a dummy slice
    assert restarted.steps_done == 1
    for name, network in method.networks().items():
        for (path, tensor), loaded in zip(
            network.state_dict().items(), restarted.networks()[name].state_dict().values()
        ):
            assert torch.equal(tensor, loaded), (name, path)
    method.eval_mode()
    restarted.eval_mode()
    images = batches(1)[0].images
    torch.testing.assert_close(method.translate(images), restarted.translate(images))
    restarted.train_mode()
    restarted.train_step(*batches(2))  # and training goes on with the restored optimiser state


def test_two_stage_trains_the_translation_then_only_the_segmenter():
    method = small_method("cut_seg", two_stage=True, iterations=4, translation_fraction=0.5)
    method.train_mode()

    def snapshot(network: torch.nn.Module) -> list[torch.Tensor]:
        return [parameter.detach().clone() for parameter in network.parameters()]

    def changed(before: list[torch.Tensor], network: torch.nn.Module) -> bool:
        return any(not torch.equal(old, new) for old, new in zip(before, network.parameters()))

    segmenter, generator = snapshot(method.segmenter), snapshot(method.generator)
    for step in range(2):
        assert "dice" not in method.train_step(*batches(step))
    assert changed(generator, method.generator) and not changed(segmenter, method.segmenter)
    generator = snapshot(method.generator)
    for step in range(2, 4):
        assert set(method.train_step(*batches(step))) == {"cross_entropy", "dice"}
    assert changed(segmenter, method.segmenter) and not changed(generator, method.generator)


def test_cisfa_trains_resumes_and_translates_whole_volumes_through_the_engine(
    tiny_phantom, label_map, tmp_path
):
    request = tiny_request(tiny_phantom, label_map, tmp_path / "run", method="cisfa")
    request.overrides = {**request.overrides, "iterations": 3, "checkpoint_every": 3}
    train(request)
    request.overrides = {**request.overrides, "iterations": 5}
    resumed = train(request)  # a fresh method loads last.pt (heads included) before its first batch
    assert resumed.steps_done == 5
    model = TrainedModel.load(resumed.best_checkpoint, "cpu")
    assert model.can_translate
    written = translate_cases(model, tiny_phantom.source[:1], tmp_path / "translated")
    translated, source = sitk.ReadImage(str(written[0])), sitk.ReadImage(str(tiny_phantom.source[0].image))
    assert translated.GetSize() == source.GetSize() and translated.GetSpacing() == source.GetSpacing()
    values = sitk.GetArrayFromImage(translated)
    assert np.isfinite(values).all() and 0.0 <= values.min() and values.max() <= 1.0


# ---- the phantom ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cut_seg_on_phantom(phantom, label_map, tmp_path_factory):
    """``cut_seg`` (fast preset) on phantom source 0-7 and the target images (no target label is read)."""
    return train_fast_on_phantom("cut_seg", phantom, label_map, tmp_path_factory.mktemp("cut_seg_run"))


# No test claims that cut_seg beats source_only on the phantom target: it does not, reliably. In the
# accuracy sweep (Testing/README.md) its fast run scored 0.034 against the floor's 0.049 (seed 0,
# default kernels) and 0.166 against 0.247 (seed 4, native); grown to 300 steps it fell further
# (0.083 against 0.055, 0.066 against 0.267). Its translation does move the heart's intensities
# towards the target's (the Wasserstein test below holds in every cell), but its segmenter gains
# nothing from it at this size, as on MS-CMRSeg (benchmarks/RESULTS.md: 47.8 against 47.1).


@pytest.mark.accuracy
def test_cisfa_beats_source_only_on_the_phantom_target(
    phantom, phantom_test_targets, label_map, source_only_target_dice, tmp_path, require_gain
):
    # 300 steps, not the preset's 100: at 100 it lost to the floor on one seed of the sweep (0.226
    # against 0.247); at 300 it gained 0.36 and 0.20 on the sweep's two hardest cells
    trained = train_fast_on_phantom("cisfa", phantom, label_map, tmp_path / "cisfa_run", iterations=300)
    adapted = mean_dice(trained.best_checkpoint, phantom_test_targets, label_map, tmp_path / "cisfa")
    require_gain("mean Dice over source_only", adapted, source_only_target_dice, 0.04)


def heart_intensities(
    case, label_map, preprocess: PreprocessConfig, model: TrainedModel | None = None
) -> np.ndarray:
    """Normalised intensities inside the heart (any labelled structure); translated first when a model is given."""
    image, label = load_case(case, label_map)
    prepared = prepare_volume(image, preprocess, label)
    slices = prepared.slices
    if model is not None:
        slices = model.method.translate(torch.from_numpy(slices[:, None])).numpy()[:, 0]
    return slices[prepared.labels > 0]


@pytest.mark.accuracy
def test_translation_moves_the_source_towards_the_targets_intensities_inside_the_heart(
    phantom, label_map, cut_seg_on_phantom, require_gain
):
    model = TrainedModel.load(cut_seg_on_phantom.best_checkpoint, "cpu")
    preprocess = model.preprocess
    target = np.concatenate([heart_intensities(case, label_map, preprocess) for case in phantom.target[2:]])
    held_out = phantom.source[8:]
    source = np.concatenate([heart_intensities(case, label_map, preprocess) for case in held_out])
    translated = np.concatenate([heart_intensities(case, label_map, preprocess, model) for case in held_out])
    before, after = wasserstein_distance(source, target), wasserstein_distance(translated, target)
    require_gain("relative reduction of the Wasserstein distance", 1.0 - after / before, 0.0, 0.18)


def test_translation_grid_shows_a_translating_checkpoint_and_skips_a_segmenter_only_one(
    phantom, label_map, cut_seg_on_phantom, trained_source_model, tmp_path
):
    split = DataSplit("phantom", phantom.source[:8], [], phantom.target[:2], {})
    grid = write_translation_grid(
        cut_seg_on_phantom.best_checkpoint, split, label_map, tmp_path / "grid.png", "cpu"
    )
    assert grid is not None and grid.stat().st_size > 10_000
    assert (
        write_translation_grid(trained_source_model.best_checkpoint, split, label_map, tmp_path / "no.png")
        is None
    )
    assert not (tmp_path / "no.png").exists()
