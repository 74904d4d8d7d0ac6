"""Domain generalisation on the phantom: trained on the bSSFP-like source alone, never seeing a target
image, GIN + IPA and SLAug must segment the LGE-like target far better than the plain floor."""

from __future__ import annotations

import pytest
from conftest import mean_dice, train_fast_on_phantom

from CardiacUDALib.checkpoint import load_checkpoint

DG_ITERATIONS = 300  # the demo trains 500 steps; 300 keep the test short and the gain large


@pytest.mark.accuracy
@pytest.mark.parametrize("method", ["gin_ipa", "slaug"])
def test_domain_generalisation_beats_source_only_on_the_phantom_target(
    method, phantom, phantom_test_targets, label_map, source_only_target_dice, tmp_path, require_gain
):
    trained = train_fast_on_phantom(
        method, phantom, label_map, tmp_path / method, iterations=DG_ITERATIONS, validate_every=DG_ITERATIONS
    )
    saved = load_checkpoint(trained.best_checkpoint, expected_method=method)
    assert saved.method_config["norm"] == "instance" and saved.preprocess["intensity"] == "minmax"
    dice = mean_dice(trained.best_checkpoint, phantom_test_targets, label_map, tmp_path / "segmentations")
    require_gain("mean Dice over source_only", dice, source_only_target_dice, 0.15)
