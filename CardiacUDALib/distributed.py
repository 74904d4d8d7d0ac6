"""Training on several processes, as ``torchrun`` starts them (``torch.distributed``: NCCL on GPUs,
gloo on CPUs).

``torchrun --nproc_per_node N -m CardiacUDALib.cli train ...`` starts N copies of the command with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set (and the rendezvous in ``MASTER_ADDR``/``MASTER_PORT``);
:func:`this_process` reads them. Every rank builds the same method from the same seed, draws its own
part of each step's global batch (:meth:`CardiacUDALib.data.SlicePool.batch`), and
:class:`SynchronisedTraining` keeps the ranks' models identical:

* gradients are averaged over the ranks at every optimiser step (a step pre-hook on each of the
  method's optimisers), the arithmetic of ``DistributedDataParallel``: the mean over ranks of each
  rank's mean-reduced loss gradient, which is the gradient of the global batch's loss when the losses
  are means over samples;
* floating-point buffers (BatchNorm running statistics) are averaged after every step, other buffers
  (counters) come from rank 0, and a method whose state depends on the batch in another way (CMEVAE's
  memory bank) gathers what it stores from every rank (:func:`gather_rows`);
* the losses each rank reports are averaged, so the logged curve is the global batch's and every rank
  takes the same decision on a diverged step;
* a stop asked on any rank (Ctrl-C, SIGTERM, the stop file) stops every rank at the same step.

Why not ``DistributedDataParallel`` around each network: its reducer expects one forward through the
wrapper per backward over a fixed set of trainable parameters. The methods here call the same network
on several batches per step, call sub-networks directly, step critics several times per segmenter step
and change which parameters train between phases (PnP-AdaNet's source phase, then the DAM); a call
that bypasses the wrapper is silently not reduced, and a phase change breaks the reducer. Averaging at
the optimiser step needs none of that and is exact for all of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from CardiacUDALib.checkpoint import content_sha256
from CardiacUDALib.device import resolve_device
from CardiacUDALib.errors import CardiacUDAError

# How long a rank waits for the others at a collective; rank 0 validates and writes checkpoints while
# the others wait at the next step's first collective.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes: ``rank`` of ``count``."""

    rank: int = 0
    count: int = 1
    local_rank: int = 0  # the rank on this machine: the GPU index

    @property
    def is_main(self) -> bool:
        """Rank 0 validates, writes checkpoints, reports and progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.count > 1


def _environment_integer(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise CardiacUDAError(f"environment variable {name}={value!r} is not a whole number") from None


def this_process() -> Ranks:
    """The ranks torchrun set in the environment; one rank of one when started without torchrun."""
    count = _environment_integer("WORLD_SIZE", 1)
    rank = _environment_integer("RANK", 0)
    if count < 1 or not 0 <= rank < count:
        raise CardiacUDAError(f"RANK={rank} and WORLD_SIZE={count} do not describe a process group")
    return Ranks(rank, count, _environment_integer("LOCAL_RANK", rank))


def start(ranks: Ranks, device_name: str) -> tuple[torch.device, bool]:
    """This rank's device, joining the process group when there are several ranks.

    Returns ``(device, started)``; ``started`` is True when this call created the process group (the
    caller then ends it with :func:`finish`). GPUs: rank ``local_rank`` uses GPU ``local_rank`` over
    NCCL; CPUs use gloo.
    """
    device = resolve_device(device_name)
    if not ranks.distributed:
        return device, False
    if device.type == "cuda":
        if ranks.local_rank >= torch.cuda.device_count():
            raise CardiacUDAError(
                f"local rank {ranks.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                "start at most that many processes per node (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise CardiacUDAError(f"training on several processes needs CUDA GPUs or the CPU, not {device.type}")
    if dist.is_initialized():
        return device, False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.count, timeout=COLLECTIVE_TIMEOUT)
    return device, True


def finish() -> None:
    """Leave the process group (after a last barrier, so no rank leaves while another still needs it)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on at least one."""
    if not _active():
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def average_losses(losses: Mapping[str, float], device: torch.device) -> dict[str, float]:
    """Each named loss averaged over the ranks (every rank has the same names at the same step)."""
    if not _active():
        return dict(losses)
    names = sorted(losses)
    values = torch.tensor([float(losses[name]) for name in names], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {name: float(value) / dist.get_world_size() for name, value in zip(names, values.tolist())}


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every rank's ``rows`` (any number along the first axis), concatenated in rank order, on every rank."""
    if not _active():
        return rows
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    longest = max(int(c.item()) for c in counts)
    padded = rows.new_zeros((longest, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return torch.cat([part[: int(c.item())] for part, c in zip(gathered, counts)])


def state_digests(networks: Mapping[str, nn.Module]) -> list[str]:
    """The SHA-256 of every rank's network states, in rank order, on every rank; refuses to go on when
    they differ (the ranks would be training different models)."""
    digest = content_sha256({name: network.state_dict() for name, network in networks.items()})
    if not _active():
        return [digest]
    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        raise CardiacUDAError(
            "the training processes' networks differ (a method stepped an optimiser the engine does not "
            f"know, or changed a buffer on one rank only): {digests}"
        )
    return digests


def _average_gradients(parameters: list[nn.Parameter]) -> None:
    """Replace each gradient by its mean over the ranks; a parameter without a gradient on every rank
    keeps none (as a single process would skip it), one with a gradient somewhere gets the mean with
    zeros for the ranks that had none."""
    if not parameters:
        return
    device = parameters[0].device
    has_gradient = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32, device=device)
    dist.all_reduce(has_gradient)
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in parameters]
    )
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for parameter, seen in zip(parameters, has_gradient.tolist()):
        size = parameter.numel()
        if seen:
            parameter.grad = flat[offset : offset + size].view_as(parameter).to(parameter.dtype)
        offset += size


class SynchronisedTraining:
    """Keeps one method's networks identical on every rank (see the module docstring)."""

    def __init__(self, networks: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer]):
        self.networks = dict(networks)
        self.handles = []
        if not _active():
            return
        for module in self.networks.values():  # rank 0's starting point, whatever each rank loaded
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)
        for optimizer in optimizers.values():
            self.handles.append(optimizer.register_step_pre_hook(self._before_optimizer_step))

    @staticmethod
    def _before_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        # All of one optimiser's gradients in one flat all-reduce.
        _average_gradients([p for group in optimizer.param_groups for p in group["params"]])

    def after_step(self) -> None:
        """Average floating-point buffers (running statistics); take rank 0's other buffers."""
        if not _active():
            return
        for module in self.networks.values():
            for buffer in module.buffers():
                if buffer.is_floating_point():
                    dist.all_reduce(buffer.data)
                    buffer.data /= dist.get_world_size()
                else:
                    dist.broadcast(buffer.data, src=0)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def convert_to_sync_batchnorm(networks: Mapping[str, nn.Module], device: torch.device) -> None:
    """Every BatchNorm layer computes its batch statistics over all ranks (``--set sync_batchnorm=true``).

    In place (the networks' own children are replaced; the parameters are the same objects, so the
    optimisers keep them). PyTorch's SyncBatchNorm has GPU kernels only.
    """
    if device.type != "cuda":
        raise CardiacUDAError(
            "sync_batchnorm needs CUDA GPUs: PyTorch's SyncBatchNorm has no CPU kernel; "
            "train without it (each rank then normalises with its own batch's statistics)"
        )
    for network in networks.values():
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(network)
        if converted is not network:
            raise CardiacUDAError("a network that is itself a BatchNorm layer cannot be converted in place")
