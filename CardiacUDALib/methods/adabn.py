"""``adabn``: training-free test-time adaptation by re-estimating BatchNorm statistics (Li et al. 2016).

A segmenter trained on the source normalises every layer with the *source's* feature statistics.
AdaBN replaces each BatchNorm layer's running mean and variance with those of the *target* images;
no weight changes, no labels, one pass over the target slices.

The ``adabn`` method trains ``source_only`` (same config) unless it starts from a given source
checkpoint with ``iterations=0``; the training engine then runs the ``adabn`` stage
(:mod:`CardiacUDALib.stages`, where the statistics are estimated) on the selected checkpoint. Any
method whose segmentation path has BatchNorm can take the same final step (``--adabn`` on ``train`` /
``benchmark``).
"""

from __future__ import annotations

from typing import ClassVar

from CardiacUDALib.methods.registry import register_method
from CardiacUDALib.methods.source_only import SourceOnly


@register_method
class AdaBN(SourceOnly):
    key = "adabn"
    description = (
        "Training-free: re-estimate a source U-Net's BatchNorm statistics on the target images (AdaBN)."
    )
    presets: ClassVar = {"paper": {"norm": "batch"}, "fast": SourceOnly.presets["fast"]}  # BatchNorm to adapt
    uses_target = True
    finishing_stages = ("adabn",)
