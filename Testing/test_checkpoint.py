"""Checkpoint round trip, refusal of unsafe or foreign files, atomic saving and file hashing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from CardiacUDALib.atomic import file_sha256
from CardiacUDALib.checkpoint import (
    DIGEST_KEY,
    FORMAT_MARKER,
    FORMAT_VERSION,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from CardiacUDALib.errors import CheckpointError


def _write_marker(path: str) -> None:
    Path(path).write_text("code from the checkpoint ran")


class _MarkerWriter:
    """Unpickling an instance calls ``_write_marker``: the stand-in for a malicious payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_write_marker, (str(self.marker),))


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _train_step(network: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    inputs = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    optimizer.zero_grad()
    network(inputs).square().mean().backward()
    optimizer.step()


def _checkpoint(network: nn.Module, optimizer: torch.optim.Optimizer, **overrides) -> Checkpoint:
    values = {
        "method": "source_only",
        "method_config": {"learning_rate": 0.001, "channels": [8, 16], "fast": False},
        "label_map": {"name": "mmwhs", "values": [205, 500], "class_names": ["MYO", "LV"]},
        "preprocess": {"size": [256, 256], "normalisation": "zscore"},
        "state": {
            "networks": {"segmenter": network.state_dict()},
            "optimizers": {"segmenter": optimizer.state_dict()},
        },
        "step": 2,
        "metadata": {
            "version": "0.1.0",
            "created": "2024-05-01T12:00:00+00:00",
            "best_validation_dice": 0.71,
        },
    }
    values.update(overrides)
    return Checkpoint(**values)


@pytest.fixture()
def trained() -> tuple[nn.Module, torch.optim.Optimizer]:
    network = _network()
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    for _ in range(2):
        _train_step(network, optimizer)
    return network, optimizer


@pytest.fixture()
def saved(tmp_path, trained) -> Path:
    return save_checkpoint(_checkpoint(*trained), tmp_path / "model.pt")


def test_round_trip_preserves_everything_and_training_resumes(tmp_path, trained) -> None:
    network, optimizer = trained
    original = _checkpoint(network, optimizer)
    loaded = load_checkpoint(save_checkpoint(original, tmp_path / "model.pt"), expected_method="source_only")

    for name in ("method", "method_config", "label_map", "preprocess", "step", "metadata", "format_version"):
        assert getattr(loaded, name) == getattr(original, name)
    for key, tensor in network.state_dict().items():
        assert torch.equal(loaded.state["networks"]["segmenter"][key], tensor)

    restored_network = _network()
    restored_network.load_state_dict(loaded.state["networks"]["segmenter"])
    restored_optimizer = torch.optim.Adam(restored_network.parameters(), lr=0.5)  # lr comes from the file
    restored_optimizer.load_state_dict(loaded.state["optimizers"]["segmenter"])
    _train_step(network, optimizer)
    _train_step(restored_network, restored_optimizer)
    for resumed, continued in zip(restored_network.parameters(), network.parameters()):
        assert torch.equal(resumed, continued)


def test_missing_or_unreadable_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="absent.pt does not exist"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*folder.pt"):
        load_checkpoint(tmp_path / "folder.pt")


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty", "text"])
def test_damaged_or_foreign_bytes_are_reported_as_corrupt(saved: Path, damage: str) -> None:
    contents = saved.read_bytes()
    damaged = {
        "truncated": contents[: len(contents) // 2],
        "random bytes": np.random.default_rng(0).bytes(4096),
        "empty": b"",
        "text": b"patient01 0.83 0.79\n",
    }[damage]
    saved.write_bytes(damaged)
    with pytest.raises(CheckpointError, match=f"{saved.name} is corrupt or not a CardiacUDA checkpoint"):
        load_checkpoint(saved)


def test_file_needing_arbitrary_code_is_refused_without_running_it(tmp_path) -> None:
    marker = tmp_path / "marker.txt"
    path = tmp_path / "malicious.pt"
    torch.save({"format": FORMAT_MARKER, "format_version": FORMAT_VERSION, "x": _MarkerWriter(marker)}, path)
    with pytest.raises(CheckpointError, match="never executes code") as refusal:
        load_checkpoint(path)
    assert "_write_marker" in str(refusal.value)
    assert not marker.exists()
    # Control: a full unpickle would have run it, so the check above is not vacuous.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_torch_file_without_marker_is_not_a_checkpoint(tmp_path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"segmenter": _network().state_dict()}, path)
    with pytest.raises(CheckpointError, match="weights.pt is not a CardiacUDA checkpoint"):
        load_checkpoint(path)


def test_incomplete_checkpoint(tmp_path) -> None:
    path = tmp_path / "partial.pt"
    torch.save({"format": FORMAT_MARKER, "format_version": FORMAT_VERSION, "method": "cisfa"}, path)
    with pytest.raises(CheckpointError, match="lacks method_config"):
        load_checkpoint(path)


def test_newer_format_asks_to_upgrade(tmp_path, trained) -> None:
    path = save_checkpoint(_checkpoint(*trained, format_version=FORMAT_VERSION + 1), tmp_path / "future.pt")
    expected = rf"newer CardiacUDA \(format {FORMAT_VERSION + 1}, this version reads up to {FORMAT_VERSION}\): upgrade"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path)


def test_other_method_is_refused(saved: Path) -> None:
    with pytest.raises(CheckpointError, match="is a source_only checkpoint, not cisfa"):
        load_checkpoint(saved, expected_method="cisfa")


def test_config_that_is_not_json_is_refused_at_save_time(tmp_path, trained) -> None:
    checkpoint = _checkpoint(*trained, method_config={"data": tmp_path})
    with pytest.raises(ValueError, match="method_config"):
        save_checkpoint(checkpoint, tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


def test_file_sha256_matches_hashlib_over_several_chunks(tmp_path) -> None:
    contents = np.random.default_rng(1).bytes(5 * 1024 * 1024 // 2)
    path = tmp_path / "weights.bin"
    path.write_bytes(contents)
    assert file_sha256(path) == hashlib.sha256(contents).hexdigest()


def test_weights_changed_after_saving_are_refused_as_damaged(saved: Path) -> None:
    """torch.load itself would hand back the changed tensors: the saved content digest catches them."""
    payload = torch.load(saved, weights_only=True)
    payload["state"]["networks"]["segmenter"]["0.weight"][0, 0] += 1e-3
    torch.save(payload, saved)
    with pytest.raises(CheckpointError, match=f"{saved.name} is damaged: its content no longer matches"):
        load_checkpoint(saved)


def test_a_checkpoint_from_before_the_digest_still_loads(saved: Path) -> None:
    payload = torch.load(saved, weights_only=True)
    del payload[DIGEST_KEY]
    payload["format_version"] = 1
    torch.save(payload, saved)
    assert load_checkpoint(saved).step == 2
    payload["format_version"] = FORMAT_VERSION  # a current file without its digest is incomplete
    torch.save(payload, saved)
    with pytest.raises(CheckpointError, match=f"lacks {DIGEST_KEY}"):
        load_checkpoint(saved)
