"""Self-training: what it starts from, what its pseudo-label loss counts, how the teacher follows."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_request

from CardiacUDALib.checkpoint import load_checkpoint
from CardiacUDALib.errors import InputDataError
from CardiacUDALib.methods.self_training import pseudo_label_loss
from CardiacUDALib.training import train


def test_pseudo_labels_count_only_where_the_teacher_is_confident():
    teacher = torch.tensor([[4.0, 0.0], [0.0, 0.1]]).T.reshape(
        1, 2, 1, 2
    )  # pixel 0 sure of class 0, pixel 1 not
    student = torch.zeros(1, 2, 1, 2)  # 50 / 50 everywhere: CE = log 2 per pixel
    loss, confident = pseudo_label_loss(student, teacher, threshold=0.9)
    assert confident.item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item() / 2)  # one of two pixels counts
    assert pseudo_label_loss(student, teacher, threshold=0.5)[1].item() == pytest.approx(1.0)


def test_self_training_without_a_trained_model_says_to_give_one(tiny_phantom, label_map, tmp_path):
    with pytest.raises(InputDataError, match="refines a trained model: give its checkpoint with --init"):
        train(tiny_request(tiny_phantom, label_map, tmp_path, method="self_training"))


def test_it_starts_as_its_teacher_and_the_teacher_follows_the_student_as_an_average(
    tiny_phantom, label_map, tiny_model, tmp_path
):
    request = tiny_request(
        tiny_phantom,
        label_map,
        tmp_path,
        method="self_training",
        initial_checkpoint=tiny_model,
        overrides={"iterations": 2, "batch_size": 2, "validate_every": 100, "teacher_momentum": 0.5},
    )
    outcome = train(request)
    start = load_checkpoint(tiny_model).state["networks"]["segmenter"]
    networks = load_checkpoint(outcome.last_checkpoint).state["networks"]
    assert networks["teacher"].keys() == start.keys() == networks["segmenter"].keys()
    assert outcome.history["losses"][-1]["confident"] >= 0
    moved = [
        name
        for name, value in start.items()
        if value.is_floating_point() and not torch.equal(value, networks["segmenter"][name])
    ]
    assert moved  # the student learned
    buffers = ("running_mean", "running_var")  # copied from the student, not averaged
    for name in [name for name in moved if not name.endswith(buffers)]:
        teacher, student, initial = networks["teacher"][name], networks["segmenter"][name], start[name]
        # two EMA steps with m = 0.5 leave the teacher strictly between its start and the student
        assert not torch.equal(teacher, initial) and not torch.equal(teacher, student)
