"""Domain generalisation on the phantom: trained on the bSSFP-like source alone, never seeing a target
image, GIN, GIN + IPA and SLAug must segment the LGE-like target far better than the plain floor; ``gin`` is
``gin_ipa``'s pipeline with one GIN view."""

from __future__ import annotations

import pytest
from conftest import mean_dice, tiny_request, train_fast_on_phantom

from CardiacUDALib.checkpoint import load_checkpoint
from CardiacUDALib.methods import build_config, get_method
from CardiacUDALib.training import train

# the demo trains 500 two-view (gin_ipa) or 1500 one-view (gin) steps; these keep the test short and the
# gain large, at about the same cost per method (a one-view step costs a third of an IPA step)
DG_ITERATIONS = {"gin_ipa": 300, "slaug": 300, "gin": 900}


@pytest.mark.accuracy
@pytest.mark.parametrize("method", sorted(DG_ITERATIONS))
def test_domain_generalisation_beats_source_only_on_the_phantom_target(
    method, phantom, phantom_test_targets, label_map, source_only_target_dice, tmp_path, require_gain
):
    iterations = DG_ITERATIONS[method]
    trained = train_fast_on_phantom(
        method, phantom, label_map, tmp_path / method, iterations=iterations, validate_every=iterations
    )
    saved = load_checkpoint(trained.best_checkpoint, expected_method=method)
    assert saved.method_config["norm"] == "instance" and saved.preprocess["intensity"] == "minmax"
    dice = mean_dice(trained.best_checkpoint, phantom_test_targets, label_map, tmp_path / "segmentations")
    require_gain("mean Dice over source_only", dice, source_only_target_dice, 0.15)


def test_gin_is_gin_ipa_with_one_gin_view(tiny_phantom, label_map, tmp_path):
    """The ``gin`` key trains exactly what ``gin_ipa --set appearance=gin`` trains (the runs in RESULTS.md),
    with no IPA consistency term, and its default is the 2400-step schedule measured there."""
    steps = {"iterations": 4, "validate_every": 2, "checkpoint_every": 2, "batch_size": 2}
    gin = train(tiny_request(tiny_phantom, label_map, tmp_path / "gin", method="gin", overrides=steps))
    one_view = train(
        tiny_request(
            tiny_phantom,
            label_map,
            tmp_path / "gin_ipa",
            method="gin_ipa",
            overrides={**steps, "appearance": "gin"},
        )
    )
    assert gin.history["losses"] == one_view.history["losses"]
    assert "consistency" not in gin.history["losses"][-1]
    assert load_checkpoint(gin.last_checkpoint, expected_method="gin").method_config["appearance"] == "gin"
    assert build_config(get_method("gin")) == build_config(
        get_method("gin_ipa"), appearance="gin", iterations=2400
    )
