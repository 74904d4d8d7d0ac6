"""``gin_ipa`` and ``gin``: single-source domain generalisation, no target image needed (Ouyang et al., IEEE TMI 2022).

A ``source_only`` U-Net whose every source image gets random new contrasts: GIN remaps it through a
freshly drawn shallow convolutional network, IPA blends two such views with a smooth random map, and
a consistency term asks the two views for the same prediction (:mod:`CardiacUDALib.appearance`, the
paper's Eq. 2-3, 6 and 8; the loss is written out in :mod:`CardiacUDALib.methods.source_only`). The
network never sees a target image, so it is trained once for every target sequence.

Instance norm (BatchNorm statistics of GIN-remapped images would not describe any real sequence) and
min-max intensities, as the strongest source-only control measured on MS-CMRSeg.

``gin`` is GIN alone: one remapped view per source image, no IPA blend and no consistency term, for four
times ``gin_ipa``'s steps at a third of its cost per step. On MS-CMRSeg C0 -> LGE it is the best
domain-generalisation pipeline measured here (benchmarks/RESULTS.md: 77.3 +- 1.6 over three seeds,
against 74.6 +- 1.6 for ``gin_ipa``'s 600 steps, both with flips).
"""

from __future__ import annotations

from typing import ClassVar

from CardiacUDALib.methods.registry import register_method
from CardiacUDALib.methods.source_only import SourceOnly

DOMAIN_GENERALISATION = {"appearance": "gin_ipa", "norm": "instance", "intensity": "minmax"}


@register_method
class GinIpa(SourceOnly):
    key = "gin_ipa"
    description = (
        "Domain generalisation (GIN + IPA): random-convolution contrasts on the source; no target images."
    )
    presets: ClassVar = {
        "paper": {**DOMAIN_GENERALISATION, "iterations": 600},
        # CPU demo: 500 steps (the contrasts are harder to learn than the phantom's source alone)
        "fast": {
            **SourceOnly.presets["fast"],
            **DOMAIN_GENERALISATION,
            "iterations": 500,
            "validate_every": 100,
            "checkpoint_every": 100,
        },
    }


@register_method
class Gin(GinIpa):
    key = "gin"
    description = "Domain generalisation (GIN alone): one random-convolution contrast per source image; no target images."
    presets: ClassVar = {
        "paper": {**DOMAIN_GENERALISATION, "appearance": "gin", "iterations": 2400},
        # CPU demo: 1500 one-view steps cost about what gin_ipa's 500 two-view steps do
        "fast": {
            **GinIpa.presets["fast"],
            "appearance": "gin",
            "iterations": 1500,
            "validate_every": 250,
            "checkpoint_every": 250,
        },
    }
