"""Export a trained U-Net model (``source_only``, ``gin_ipa``, ``slaug``, ``self_training``) for shipping.

The shipped form keeps what segmenting and adapting further need and drops the rest: the network that
segments (for ``self_training`` the EMA teacher, which becomes both networks again on loading), the
method, its config, label map and preprocessing; no optimiser states, no student. The file is an
ordinary CardiacUDA checkpoint (loaded with ``torch.load(weights_only=True)``, content digest checked),
so ``cardiac-uda segment --checkpoint`` and ``--init`` read it as they read the original.

    python benchmarks/export_model.py runs/st800_gin2400_seed2/checkpoints/best.pt \
        --out CardiacUDALib/models/mscmrseg_c0_lge_gin_self_training.pt
then ``sha256sum`` and ``stat -c %s`` of the file go into ``CardiacUDALib/models/manifest.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from CardiacUDALib.atomic import file_sha256
from CardiacUDALib.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from CardiacUDALib.errors import CheckpointError
from CardiacUDALib.methods.registry import get_method
from CardiacUDALib.methods.source_only import SourceOnly


def export_segmenter(source: Path, out: Path, spacing: float | None = None) -> Path:
    """``source`` checkpoint -> ``out`` with only the segmenting network's weights; ``spacing`` (mm) records
    the in-plane spacing the model segments at, for a checkpoint trained without resampling (a
    benchmark run at each volume's own spacing: the median spacing of the target volumes it adapted to)."""
    checkpoint = load_checkpoint(source)
    if not issubclass(get_method(checkpoint.method), SourceOnly):
        raise CheckpointError(
            f"{source}: only U-Net models of the source_only family export, not {checkpoint.method}"
        )
    networks = checkpoint.state["networks"]
    segmenting = networks.get("teacher", networks["segmenter"])  # self_training segments with its teacher
    exported = Checkpoint(
        method=checkpoint.method,
        method_config=checkpoint.method_config,
        label_map=checkpoint.label_map,
        preprocess=checkpoint.preprocess | ({} if spacing is None else {"in_plane_spacing": spacing}),
        state={"networks": {"segmenter": segmenting}, "optimizers": {}},
        step=checkpoint.step,
        metadata={  # a re-export (to record a spacing) keeps the first export's origin
            "exported_from": str(source),
            "exported_from_sha256": file_sha256(source),
            **checkpoint.metadata,
        },
    )
    return save_checkpoint(exported, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--spacing", type=float, default=None, metavar="MM", help="record this in-plane spacing (mm)"
    )
    args = parser.parse_args()
    path = export_segmenter(args.checkpoint, args.out, args.spacing)
    print(f"{path}: {path.stat().st_size} bytes, sha256 {file_sha256(path)}")


if __name__ == "__main__":
    main()
