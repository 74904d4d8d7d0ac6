"""``slaug``: single-source domain generalisation by location-scale augmentation (Su et al., AAAI 2023).

A ``source_only`` U-Net trained on two remaps of every source image: a global one (GLA, a random
monotone Bezier intensity curve then a random location and scale) and the fusion of GLA with a
class-level one (LLA, a curve per label region) weighted by the saliency of the network's own input
gradient (SBF). Functions and the training-step hook: :mod:`CardiacUDALib.location_scale` and
``SourceOnly.source_loss``; the loss:

    L = [CE + Dice](f(GLA(x)), y) + [CE + Dice](f(w * GLA(x) + (1 - w) * LLA(x, y)), y),
    w = smooth(|d L_GLA / d GLA(x)|) rescaled to [0, 1]

With the papers' geometric augmentation (random affine + elastic, :mod:`CardiacUDALib.deformation`),
instance norm and min-max intensities (the curves work in [0, 1]). No target image is needed.
"""

from __future__ import annotations

from typing import ClassVar

from CardiacUDALib.methods.gin_ipa import GinIpa
from CardiacUDALib.methods.registry import register_method
from CardiacUDALib.methods.source_only import SourceOnly

LOCATION_SCALE = {"appearance": "slaug", "norm": "instance", "intensity": "minmax", "deform": True}


@register_method
class SLAug(SourceOnly):
    key = "slaug"
    description = "Domain generalisation (SLAug): Bezier location-scale remaps, saliency-balanced fusion."
    presets: ClassVar = {
        "paper": {**LOCATION_SCALE, "iterations": GinIpa.presets["paper"]["iterations"]},
        # CPU phantom runs: width 12 (at width 8 the phantom's RV stays at Dice 0.2 after 1000 steps);
        # 500 steps: 3 minutes on 2 cores, mean target Dice 0.66 (benchmarks/RESULTS.md, phantom demo)
        "fast": {**GinIpa.presets["fast"], **LOCATION_SCALE, "width": 12},
    }
