"""``gin_ipa``: single-source domain generalisation, no target image needed (Ouyang et al., IEEE TMI 2022).

A ``source_only`` U-Net whose every source image gets random new contrasts: GIN remaps it through a
freshly drawn shallow convolutional network, IPA blends two such views with a smooth random map, and
a consistency term asks the two views for the same prediction (:mod:`CardiacUDALib.appearance`, the
paper's Eq. 2-3, 6 and 8; the loss is written out in :mod:`CardiacUDALib.methods.source_only`). The
network never sees a target image, so it is trained once for every target sequence.

Instance norm (BatchNorm statistics of GIN-remapped images would not describe any real sequence) and
min-max intensities, as the strongest source-only control measured on MS-CMRSeg.
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
