"""PnP-AdaNet: the DAM starts as the source layers, only it and the critic learn, the WGAN steps move the
scores the right way, clipping holds, the phases survive a checkpoint, and it helps on the phantom."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TEST_SEED, mean_dice, train_fast_on_phantom
from torch import nn

from CardiacUDALib.data import SliceBatch
from CardiacUDALib.errors import CardiacUDAError
from CardiacUDALib.methods import build_config, get_method
from CardiacUDALib.methods.pnp_adanet import PnPAdaNet
from CardiacUDALib.optimizers import rmsprop

NUM_CLASSES = 4
SIZE = 32


def small_method(**overrides: object) -> PnPAdaNet:
    settings = {
        "width": 2,
        "upsample_channels_per_class": 1,
        "critic_width": 8,
        "critic_max_width": 16,
        "critic_stages": 2,
        "source_iterations": 2,
        "critic_warmup_steps": 1000,  # critic steps only, unless a test asks for DAM updates
        **overrides,
    }
    config = build_config(get_method("pnp_adanet"), "fast", **settings)
    torch.manual_seed(0)
    return PnPAdaNet(config, NUM_CLASSES, torch.device("cpu"))


def batches(seed: int = 0) -> tuple[SliceBatch, SliceBatch]:
    """A labelled source batch and a target batch with another contrast and offset."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (4, SIZE, SIZE), generator=generator)
    source = labels[:, None].float().expand(-1, 3, -1, -1) + 0.3 * torch.randn(
        4, 3, SIZE, SIZE, generator=generator
    )
    target = 2.0 - 0.6 * source + 0.5 * torch.randn(4, 3, SIZE, SIZE, generator=generator)
    return SliceBatch(source, labels), SliceBatch(target)


def run_steps(method: PnPAdaNet, steps: int, seed: int = 0) -> None:
    source, target = batches(seed)
    for _ in range(steps):
        method.apply_learning_rate(0)
        method.train_step(source, target)


def states_equal(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def critic_scores(
    method: PnPAdaNet, source: SliceBatch, target: SliceBatch
) -> dict[str, tuple[float, float]]:
    """Each critic's mean score of source and of target views, in the modes the last update left."""
    with torch.no_grad():
        scores = method.critic_scores(
            method.critic_inputs(source.images, through_dam=False),
            method.critic_inputs(target.images, through_dam=True),
        )
    return {name: (source.mean().item(), target.mean().item()) for name, (source, target) in scores.items()}


def weighted_target_score(method: PnPAdaNet, source: SliceBatch, target: SliceBatch) -> float:
    """sum_k weight_k * E[D_k(target views)]: the DAM objective (Eq. 5 with the mask critic's term), negated."""
    scores = critic_scores(method, source, target)
    return sum(method.critics[name][1] * target_score for name, (_, target_score) in scores.items())


def clipped_weights(method: PnPAdaNet) -> list[torch.Tensor]:
    return [
        module.weight
        for critic, _ in method.critics.values()
        for module in critic.modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]


def test_rmsprop_starts_its_accumulator_as_asked_and_keeps_it_through_a_checkpoint():
    gradient = torch.tensor([0.01, -0.5, 2.0])
    weights = nn.Parameter(torch.zeros(3))
    tf1 = rmsprop([weights], 3e-4)  # accumulator 1, decay 0.9 (TF1)
    weights.grad = gradient
    tf1.step()
    mean_square = 0.9 + 0.1 * gradient**2
    assert torch.allclose(weights.detach(), -3e-4 * gradient / (mean_square.sqrt() + 1e-10))
    reloaded = rmsprop([nn.Parameter(torch.zeros(3))], 3e-4)
    reloaded.load_state_dict(tf1.state_dict())
    assert torch.equal(next(iter(reloaded.state.values()))["square_avg"], mean_square)

    ours, pytorchs = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))
    like_pytorch = rmsprop([ours], 3e-4, decay=0.99, initial_mean_square=0.0, epsilon=1e-8)
    reference = torch.optim.RMSprop([pytorchs], lr=3e-4)
    for _ in range(3):
        ours.grad, pytorchs.grad = gradient.clone(), gradient.clone()
        like_pytorch.step()
        reference.step()
    assert torch.equal(ours, pytorchs)
    assert abs(ours[0].item()) > 10 * abs(weights[0].item())  # from 0, even a tiny gradient takes a full step


def test_the_dam_starts_equal_to_the_source_layers_it_replaces():
    method = small_method()
    source, target = batches()
    run_steps(method, 2)  # phase 1: the segmenter learns the source
    assert not method.adapting
    method.eval_mode()
    before_adaptation = method.segment(target.images)
    run_steps(method, 1)  # the first adaptation step (a critic step) copies the layers into the DAM
    assert method.adapting and method.counters.count("dam_steps") == 0
    assert len(method.dam) == method.segmenter.stages_for_depth(21)
    for dam_stage, source_stage in zip(method.dam, method.segmenter.stages):
        assert states_equal(dam_stage.state_dict(), source_stage.state_dict())
    method.eval_mode()
    assert torch.equal(method.segment(target.images), before_adaptation)  # the router changes nothing yet


def test_adaptation_leaves_the_frozen_segmenter_bit_identical():
    method = small_method(critic_warmup_steps=1, critic_steps_per_dam_step=1)
    run_steps(method, 2)
    segmenter_before = copy.deepcopy(method.segmenter.state_dict())  # weights and BatchNorm statistics
    method.segmenter.zero_grad(set_to_none=True)
    run_steps(method, 1)
    dam_before = copy.deepcopy(method.dam.state_dict())
    run_steps(method, 5, seed=1)
    assert method.counters.count("dam_steps") == 5
    assert states_equal(method.segmenter.state_dict(), segmenter_before)
    assert not states_equal(method.dam.state_dict(), dam_before)
    assert all(parameter.grad is None for parameter in method.segmenter.parameters())  # none even computed


# The two tests below check the direction of one update, so they take a small step (learning rate 1e-5),
# but not a vanishing one: on the code's w = 0.002 (x 0.3 for the mask critic) a fresh TF1 RMSProp
# accumulator (1) would turn it into changes of the order of float rounding, hence w = 1 here.
DIRECTION_CHECK = {"adversarial_learning_rate": 1e-5, "adversarial_weight": 1.0}


@pytest.mark.accuracy
def test_a_critic_step_widens_each_critics_source_minus_target_score(require_gain):
    method = small_method(**DIRECTION_CHECK)
    assert set(method.critics) == {"critic", "mask_critic"}  # the released code's two critics
    run_steps(method, 5)  # source training, then critic steps (weights already clipped)
    source, target = batches(seed=2 + TEST_SEED)
    before = critic_scores(method, source, target)
    method.train_step(source, target)
    assert method.counters.count("dam_steps") == 0
    after = critic_scores(method, source, target)
    margins = {"critic": 1e-4, "mask_critic": 1e-6}  # the mask critic moved ~100x less in the sweep
    for name in method.critics:
        require_gain(name, after[name][0] - after[name][1], before[name][0] - before[name][1], margins[name])


@pytest.mark.parametrize(
    "critic_settings",
    [{}, {"critic_sees_logits": False, "mask_critic_weight": 0.0}, {"critic_batch": "joint"}],
    ids=["with-output-views-per-domain", "feature-levels-only", "joint-batches"],
)
@pytest.mark.accuracy
def test_a_dam_step_raises_the_critics_score_of_target_views(critic_settings, require_gain):
    method = small_method(
        critic_warmup_steps=3, critic_steps_per_dam_step=1, **DIRECTION_CHECK, **critic_settings
    )
    run_steps(method, 5)  # 2 source steps, 3 warm-up critic steps
    source, target = batches(seed=3 + TEST_SEED)
    dam_before = copy.deepcopy(method.dam)
    method.train_step(source, target)  # one critic step, then one DAM update
    assert method.counters.count("dam_steps") == 1
    method.dam.train()  # score as the DAM update saw it: DAM BatchNorm on the batch
    dam_before.train()
    after = weighted_target_score(method, source, target)
    method.dam = dam_before
    before = weighted_target_score(method, source, target)
    require_gain("weighted target score", after, before, 1e-5)


def test_the_dcm_sees_the_logits_as_a_level_at_one_eighth_of_the_size():
    method = small_method()
    source, _ = batches()
    run_steps(method, 2)
    method.segmenter.eval()
    views = method.critic_inputs(source.images, through_dam=False)
    logits = method.segmenter(source.images)
    assert views["mask_critic"].shape == logits.shape
    logit_level = views["critic"][:, -NUM_CLASSES * 64 :]
    assert logit_level.shape[-2:] == (SIZE // 8, SIZE // 8)
    # space-to-depth: channel c*64 + 8*i + j of block (y, x) is the logit of class c at (8y + i, 8x + j)
    assert torch.equal(logit_level[:, 2 * 64 + 8 * 3 + 5, 1, 2], logits[:, 2, 8 + 3, 16 + 5])


def test_critic_weights_stay_clipped_after_every_critic_step():
    method = small_method(critic_warmup_steps=2, critic_steps_per_dam_step=2)
    bound = method.config.weight_clip
    clipped = clipped_weights(method)
    assert max(weight.abs().max().item() for weight in clipped) > bound  # not clipped to begin with
    run_steps(method, 2)
    for seed in range(6):
        source, target = batches(seed)
        method.train_step(source, target)
        assert max(weight.abs().max().item() for weight in clipped) <= bound
    assert method.counters.count("dam_steps") == 2


def test_the_phase_survives_a_checkpoint_and_a_source_model_initialises_any_depth():
    method = small_method(critic_warmup_steps=1, critic_steps_per_dam_step=1)
    run_steps(method, 4)
    resumed = small_method(critic_warmup_steps=1, critic_steps_per_dam_step=1)
    resumed.load_state_dict(method.state_dict())
    assert resumed.adapting and resumed.counters.count("dam_steps") == 1
    assert states_equal(resumed.dam.state_dict(), method.dam.state_dict())
    without_mask_critic = small_method(
        critic_warmup_steps=1, critic_steps_per_dam_step=1, mask_critic_weight=0.0
    )
    run_steps(without_mask_critic, 4)
    with pytest.raises(CardiacUDAError, match="no mask_critic"):
        resumed.load_state_dict(without_mask_critic.state_dict())

    source_model = small_method()
    run_steps(source_model, 2)  # phase 1 only
    shallower = small_method(adaptation_depth=13)
    shallower.load_state_dict({"networks": source_model.state_dict()["networks"]}, with_optimizers=False)
    assert not shallower.adapting and shallower.counters.count("source_steps") == 2
    run_steps(shallower, 1)  # no more source training: adaptation begins from the loaded segmenter
    assert shallower.counters.count("source_steps") == 2 and shallower.adapting
    assert states_equal(
        shallower.dam.state_dict(), nn.ModuleList(source_model.segmenter.stages[:7]).state_dict()
    )


def test_bad_settings_get_a_clear_message():
    with pytest.raises(CardiacUDAError, match="does not end a stage"):
        small_method(adaptation_depth=12)
    with pytest.raises(CardiacUDAError, match="1/8 of the image size"):
        small_method(critic_feature_depths=(5, 21))
    with pytest.raises(CardiacUDAError, match="critic_batch is 'joint' or 'per_domain'"):
        small_method(critic_batch="both")
    with pytest.raises(CardiacUDAError, match="lr_schedule must be 'step'"):
        small_method(lr_schedule="poly")


@pytest.mark.accuracy
def test_pnp_adanet_fast_beats_source_only_on_the_phantom_target(
    phantom, phantom_test_targets, label_map, source_only_target_dice, tmp_path, require_gain
):
    adapted = train_fast_on_phantom("pnp_adanet", phantom, label_map, tmp_path / "pnp_adanet")
    with_pnp = mean_dice(adapted.best_checkpoint, phantom_test_targets, label_map, tmp_path / "pnp")
    require_gain("mean Dice over source_only", with_pnp, source_only_target_dice, 0.015)
