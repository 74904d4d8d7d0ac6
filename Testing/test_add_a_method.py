"""A new method is one new file: registered from a module of its own, it trains, validates, saves,
loads and segments through the unchanged engine (ARCHITECTURE.md, "How to add a method")."""

from __future__ import annotations

import importlib.util
import sys

import SimpleITK as sitk
from conftest import tiny_request

from CardiacUDALib.checkpoint import load_checkpoint
from CardiacUDALib.inference import TrainedModel, segment_cases
from CardiacUDALib.methods import METHODS, get_method
from CardiacUDALib.training import train

NEW_METHOD_KEY = "pixel_classifier_under_test"

# The whole of the new method: a config, a class with the verbs, one decorator. Nothing else changes.
NEW_METHOD_FILE = f'''
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from CardiacUDALib.data import SliceBatch
from CardiacUDALib.methods.base import AdaptationMethod, MethodConfig
from CardiacUDALib.methods.registry import register_method


@dataclass
class PixelClassifierConfig(MethodConfig):
    width: int = 8


@register_method
class PixelClassifier(AdaptationMethod):
    key = "{NEW_METHOD_KEY}"
    description = "Two 3x3 convolutions trained with cross-entropy on the source (a test method)."
    config_class = PixelClassifierConfig
    presets = {{"paper": {{}}, "fast": {{}}}}
    uses_target = False

    def __init__(self, config, num_classes, device):
        super().__init__(config, num_classes, device)
        self.segmenter = nn.Sequential(
            nn.Conv2d(config.context_slices, config.width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(config.width, num_classes, 3, padding=1),
        ).to(device)
        self.optimizer = torch.optim.Adam(self.segmenter.parameters(), lr=config.learning_rate)

    def networks(self):
        return {{"segmenter": self.segmenter}}

    def optimizers(self):
        return {{"segmenter": self.optimizer}}

    def train_step(self, source: SliceBatch, target):
        loss = F.cross_entropy(self.segmenter(source.images), source.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {{"cross_entropy": loss.item()}}

    @torch.no_grad()
    def segment(self, images):
        return self.segmenter(images)
'''


def test_a_method_registered_from_its_own_module_trains_saves_loads_and_segments(
    tiny_phantom, label_map, tmp_path
):
    module_path = tmp_path / "pixel_classifier.py"
    module_path.write_text(NEW_METHOD_FILE)
    spec = importlib.util.spec_from_file_location("pixel_classifier_under_test", module_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        assert get_method(NEW_METHOD_KEY).description.startswith("Two 3x3")
        request = tiny_request(tiny_phantom, label_map, tmp_path / "run", method=NEW_METHOD_KEY)
        request.overrides = {**request.overrides, "iterations": 30, "learning_rate": 1e-2}
        outcome = train(request)
        losses = [entry["cross_entropy"] for entry in outcome.history["losses"]]
        assert losses[-1] < 0.8 * losses[0]  # it learned on the phantom's source
        assert [entry["step"] for entry in outcome.history["validation"]] == list(range(3, 31, 3))
        assert load_checkpoint(outcome.best_checkpoint, expected_method=NEW_METHOD_KEY).step > 0

        model = TrainedModel.load(outcome.best_checkpoint, "cpu")
        case = tiny_phantom.target[0]
        [written] = segment_cases(model, [case], tmp_path / "segmentations")
        segmentation, image = sitk.ReadImage(str(written)), sitk.ReadImage(str(case.image))
        assert segmentation.GetSize() == image.GetSize()
        assert segmentation.GetOrigin() == image.GetOrigin()
        assert set(sitk.GetArrayViewFromImage(segmentation).ravel()) <= {0, *label_map.values}
    finally:
        METHODS.pop(NEW_METHOD_KEY, None)
        sys.modules.pop(spec.name, None)
    assert NEW_METHOD_KEY not in METHODS
