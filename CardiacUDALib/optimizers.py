"""Optimisers whose defaults differ between the frameworks the papers' code used and PyTorch."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def rmsprop(
    parameters: Iterable[torch.nn.Parameter],
    learning_rate: float,
    decay: float = 0.9,
    initial_mean_square: float = 1.0,
    epsilon: float = 1e-10,
) -> torch.optim.RMSprop:
    """RMSProp whose mean-square accumulator starts at ``initial_mean_square``; the defaults are TF1's.

    TensorFlow 1's ``tf.train.RMSPropOptimizer`` (PnP-AdaNet's released code) starts the
    accumulator at 1 with decay 0.9 and epsilon 1e-10; PyTorch starts it at 0 (decay 0.99, epsilon 1e-8).
    From 0 the first update is ``lr / sqrt(1 - decay)`` per weight whatever the gradient's size (10 x lr
    for 0.99); from 1 an update stays ``lr * g`` until the accumulator has decayed to the gradient's
    square, so small gradients (the released code scales its adversarial losses by 0.002) start with
    tiny steps. ``initial_mean_square=0, decay=0.99, epsilon=1e-8`` is PyTorch's own RMSProp.
    """
    optimizer = torch.optim.RMSprop(parameters, lr=learning_rate, alpha=decay, eps=epsilon)
    if initial_mean_square:
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                # The state PyTorch creates at the first step (torch/optim/rmsprop.py), accumulator preset.
                optimizer.state[parameter] = {
                    "step": torch.zeros((), dtype=torch.float32),
                    "square_avg": torch.full_like(parameter, initial_mean_square),
                }
    return optimizer
