"""Training on several processes: ``torchrun`` with the gloo backend on the CPU, 2 ranks, the phantom.

Every test here starts the real command under ``python -m torch.distributed.run --standalone`` (what
``torchrun`` is), one torch thread per rank. What must hold: each rank draws its own part of every
step's global batch; the ranks' networks stay identical (every checkpoint carries each rank's digest,
and training refuses to go on when they differ); 2 ranks of batch B train like 1 rank of batch 2B;
only rank 0 writes checkpoints, history and reports; a run resumes with another number of ranks; a
SIGTERM to any one rank stops them all with the last checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from CardiacUDALib.cases import VolumeCase
from CardiacUDALib.checkpoint import content_sha256, load_checkpoint
from CardiacUDALib.data import LoadedVolume, Shard, SlicePool
from CardiacUDALib.methods import METHODS
from CardiacUDALib.phantom import write_phantom_dataset
from CardiacUDALib.preprocess import PreparedVolume

TRAIN = ["train", "--source", "ph/source", "--target", "ph/target", "--validation", "ph/target"]
COMMON = ["--label-map", "mscmrseg", "--size", "64", "--device", "cpu", "--preset", "fast"]
SCHEDULE = ["--set", "iterations=6", "--set", "validate_every=3", "--set", "checkpoint_every=3"]
# 2 ranks x batch 2 against 1 rank x batch 4, on the same slices with the same augmentation: the
# total loss ("loss") of every step that has one. Not exactly equal: source_only's class weights and
# soft Dice are computed over the batch (not means over samples), CMEVAE's memory takes
# ``memory_updates_per_class`` anchors per rank and samples its anchors with each rank's own draws, and
# pnp_adanet's BatchNorm layers normalise each rank's batch on its own (SyncBatchNorm needs GPUs), which
# is why its adversarial steps (differences of two near-equal critic means, no "loss") are not compared
# step by step: its 3 source-phase steps are. Largest relative difference over the 6 steps, seeds 0-2,
# ATEN_CPU_CAPABILITY default and avx2 (the same to 3 digits): source_only 1.8 %, pnp_adanet 2.9 %,
# cmevae 5.7 %; the bounds leave about twice that for other CPUs.
RELATIVE_LOSS_TOLERANCE = {"source_only": 0.04, "pnp_adanet": 0.06, "cmevae": 0.12}
METHOD_SETTINGS = {
    "pnp_adanet": ["--set", "source_iterations=3", "--set", "critic_warmup_steps=1"]
    + ["--set", "critic_steps_per_dam_step=1"],
}


def _environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(processes: int, *arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command += ["-m", "CardiacUDALib.cli", *arguments]
    return subprocess.run(command, cwd=cwd, env=_environment(), capture_output=True, text=True, timeout=600)


def one_process(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("cardiac-uda")), *arguments]
    return subprocess.run(command, cwd=cwd, env=_environment(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    write_phantom_dataset(root / "ph", subjects=4, seed=3, size=64)
    return root


def _losses(run: Path) -> list[dict[str, float]]:
    return json.loads((run / "history.json").read_text())["losses"]


def _rank_digests(checkpoint: Path) -> list[str]:
    """Each rank's network digest saved with the checkpoint, after checking rank 0 saved what it held."""
    saved = load_checkpoint(checkpoint)
    digests = saved.metadata["rank_state_sha256"]
    assert digests[0] == content_sha256(saved.state["networks"])
    return digests


# ---- the global batch ----------------------------------------------------------------------------


def _pool(slices: int) -> SlicePool:
    """A pool whose slice ``i`` is all ``i``, so a batch says which slices it holds."""
    images = np.arange(slices, dtype=np.float32)[:, None, None] * np.ones((1, 4, 4), np.float32)
    labels = np.zeros((slices, 4, 4), dtype=np.int64)
    volume = LoadedVolume(VolumeCase("counting", Path("counting.nrrd")), PreparedVolume(images, labels, None))
    return SlicePool([volume], context_slices=1)


def test_two_ranks_split_one_rank_s_global_batch_and_never_share_a_slice_in_an_epoch():
    pool = _pool(12)
    for step in range(5):
        whole = pool.batch(seed=7, step=step, batch_size=4, augment=True)
        parts = [pool.batch(7, step, 2, True, shard=Shard(rank, 2)) for rank in range(2)]
        np.testing.assert_array_equal(np.concatenate([p.images for p in parts]), whole.images)
    # epoch 0 is steps 0-2 (12 slices, 4 per step): each rank's slices, and both ranks' together, are distinct
    seen = {rank: [] for rank in range(2)}
    for step in range(3):
        for rank in range(2):
            batch = pool.batch(7, step, 2, False, shard=Shard(rank, 2))
            seen[rank] += batch.images[:, 0, 0, 0].tolist()
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(12))

    # one rank of batch 4 walks the same epoch; the next epoch walks all slices again, in another order
    def epoch(first_step: int) -> list[float]:
        steps = range(first_step, first_step + 3)
        return sum((pool.batch(7, step, 4, False).images[:, 0, 0, 0].tolist() for step in steps), [])

    assert sorted(epoch(0)) == sorted(seen[0] + seen[1])
    assert sorted(epoch(3)) == list(range(12)) and epoch(3) != epoch(0)


# ---- torchrun ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(RELATIVE_LOSS_TOLERANCE))
def test_two_ranks_of_batch_b_train_like_one_rank_of_batch_2b(method, workspace):
    settings = ["--method", method, *COMMON, *SCHEDULE, *METHOD_SETTINGS.get(method, [])]
    two = torchrun(2, *TRAIN, *settings, "--set", "batch_size=2", "--out", f"{method}_2x2", cwd=workspace)
    assert two.returncode == 0, two.stderr[-3000:]
    one = one_process(*TRAIN, *settings, "--set", "batch_size=4", "--out", f"{method}_1x4", cwd=workspace)
    assert one.returncode == 0, one.stderr[-3000:]

    run = workspace / f"{method}_2x2"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "history.json"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert two.stdout.count("best checkpoint:") == 1  # only rank 0 reports
    digests = _rank_digests(run / "checkpoints/last.pt")
    assert len(digests) == 2 and digests[0] == digests[1]
    assert load_checkpoint(run / "checkpoints/last.pt").metadata["processes"] == 2

    two_losses, one_losses = _losses(run), _losses(workspace / f"{method}_1x4")
    assert (
        [entry["step"] for entry in two_losses]
        == [entry["step"] for entry in one_losses]
        == list(range(1, 7))
    )
    compared = [(mine, theirs) for mine, theirs in zip(two_losses, one_losses) if "loss" in theirs]
    assert len(compared) >= 3
    for mine, theirs in compared:
        relative = abs(mine["loss"] - theirs["loss"]) / abs(theirs["loss"])
        assert relative <= RELATIVE_LOSS_TOLERANCE[method], (mine, theirs)


@pytest.fixture(scope="module")
def source_model(workspace: Path) -> Path:
    """A few-step source_only checkpoint, for the methods that refine a trained model."""
    result = one_process(
        *TRAIN, "--method", "source_only", *COMMON, *SCHEDULE, "--out", "init", cwd=workspace
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return workspace / "init/checkpoints/best.pt"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_keeps_its_ranks_identical(method, workspace, source_model):
    """Every optimiser of every method is averaged over the ranks and every buffer kept in step: the
    run checks each rank's digest at every checkpoint, and fails when they differ."""
    init = (
        ["--init", str(source_model)] if METHODS[method].needs_initial_checkpoint or method == "adabn" else []
    )
    schedule = ["--set", "iterations=2", "--set", "validate_every=2", "--set", "checkpoint_every=1"]
    result = torchrun(
        2, *TRAIN, "--method", method, *COMMON, *schedule, *init, *METHOD_SETTINGS.get(method, []),
        "--set", "batch_size=2", "--out", f"every_{method}", cwd=workspace,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    digests = _rank_digests(workspace / f"every_{method}/checkpoints/last.pt")
    assert len(digests) == 2 and digests[0] == digests[1]


def test_a_run_resumes_with_another_number_of_ranks(workspace):
    settings = [*TRAIN, "--method", "source_only", *COMMON, "--set", "batch_size=2", "--out", "resumed"]
    first = torchrun(2, *settings, "--set", "iterations=3", "--set", "checkpoint_every=3", cwd=workspace)
    assert first.returncode == 0, first.stderr[-3000:]
    alone = one_process(*settings, "--set", "iterations=5", cwd=workspace)
    assert alone.returncode == 0 and "resumed from resumed/checkpoints/last.pt at step 3" in alone.stderr
    again = torchrun(2, *settings, "--set", "iterations=7", "--set", "checkpoint_every=7", cwd=workspace)
    assert again.returncode == 0 and "resumed from resumed/checkpoints/last.pt at step 5" in again.stderr
    last = load_checkpoint(workspace / "resumed/checkpoints/last.pt")
    assert last.step == 7 and last.metadata["processes"] == 2


def _worker_of_rank(launcher: subprocess.Popen[str], rank: int) -> int:
    """The process id of torchrun's worker with ``RANK=rank`` (read from /proc)."""
    children = subprocess.run(
        ["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True, check=True
    ).stdout.split()
    for pid in children:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environment:
            return int(pid)
    raise AssertionError(f"no worker of rank {rank} among {children}")


def test_sigterm_to_one_rank_stops_every_rank_with_the_last_checkpoint_intact(workspace):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "CardiacUDALib.cli", *TRAIN, "--method", "source_only", *COMMON, "--out", "stopped"]
    command += ["--set", "iterations=100000", "--set", "checkpoint_every=5", "--set", "validate_every=100000"]
    launcher = subprocess.Popen(command, cwd=workspace, env=_environment(), stderr=subprocess.PIPE, text=True)
    last = workspace / "stopped/checkpoints/last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert last.exists(), launcher.communicate(timeout=60)[1][-3000:]
    os.kill(_worker_of_rank(launcher, 1), signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=300)
    assert "stopped at step" in stderr or "run the same command again to resume" in stderr, stderr[-3000:]
    saved = load_checkpoint(last)  # intact: its content digest is checked on loading
    assert 5 <= saved.step < 100000
    digests = _rank_digests(last)
    assert digests[0] == digests[1]


def test_sync_batchnorm_on_cpus_is_refused_with_the_reason(workspace):
    result = torchrun(
        2, *TRAIN, "--method", "source_only", *COMMON, "--set", "norm=batch", "--set", "sync_batchnorm=true",
        "--set", "iterations=2", "--out", "sync_bn", cwd=workspace,
    )  # fmt: skip
    assert result.returncode != 0
    # each rank says it in one line; the traceback that follows is torchrun's report of the failed ranks
    assert result.stderr.count("error: sync_batchnorm needs CUDA GPUs") == 2


def test_the_benchmark_under_torchrun_writes_one_report(workspace):
    """On an MS-CMRSeg-layout folder made of phantom volumes: LGE patients 1-3 validate, 6 is the test set."""
    data = workspace / "mscmrseg_layout"
    for sequence, domain, patients in (("C0", "source", (1, 2, 3, 4)), ("LGE", "target", (1, 2, 3, 6))):
        (data / sequence).mkdir(parents=True)
        for patient, case in zip(patients, ("case000", "case001", "case002", "case003")):
            stem = data / sequence / f"patient{patient}_{sequence}"
            shutil.copy(workspace / "ph" / domain / f"{case}_image.nii.gz", f"{stem}.nii.gz")
            shutil.copy(workspace / "ph" / domain / f"{case}_label.nii.gz", f"{stem}_manual.nii.gz")
    result = torchrun(
        2, "benchmark", "--dataset", "mscmrseg", "--data", str(data), "--method", "source_only", "--preset",
        "fast", "--device", "cpu", "--set", "iterations=4", "--set", "batch_size=2", "--set",
        "validate_every=2", "--no-flip-averaging", "--out", "bench", cwd=workspace,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = workspace / "bench"
    assert result.stdout.count("report:") == 1
    assert len(list(run.rglob("report.md"))) == 1 and len(list(run.rglob("summary.json"))) == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert [p.name for p in (run / "segmentations").iterdir()] == ["patient6_LGE_seg.nii.gz"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2
    assert "2 processes" in (run / "report.md").read_text()
