"""Overlay figures of a folder of volumes segmented by several models, for looking at a user's own data.

    python benchmarks/overlay_folders.py IMAGES --result shipped=seg_a --result adapted=seg_b \
        --label-map mscmrseg --out figures/psir [--rows 5]

Every volume of ``IMAGES`` (a folder of cases, as ``cardiac-uda segment --images`` reads it) is one row:
the image, then each result's ``<case>_seg.nii.gz`` drawn over the slice with the most labels; labels are
not needed. Rows go ``--rows`` to a figure, ``<out>_<n>.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from CardiacUDALib.cases import SEGMENTATION_TAG, find_cases, output_path
from CardiacUDALib.io import parse_label_map, read_image, read_label
from CardiacUDALib.report import OverlayRow, overlay_grid_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("--result", action="append", required=True, metavar="NAME=FOLDER")
    parser.add_argument("--label-map", default="mscmrseg")
    parser.add_argument("--out", type=Path, required=True, help="figure path without .png")
    parser.add_argument("--rows", type=int, default=5)
    args = parser.parse_args()
    label_map = parse_label_map(args.label_map)
    results = dict(item.split("=", 1) for item in args.result)
    cases = find_cases(args.images)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for first in range(0, len(cases), args.rows):
        rows = []
        for case in cases[first : first + args.rows]:
            image = read_image(case.image)
            predictions = {
                name: read_label(output_path(folder, case, SEGMENTATION_TAG), label_map, image)
                for name, folder in results.items()
            }
            rows.append(OverlayRow(case.name, image, None, predictions))
        path = Path(f"{args.out}_{first // args.rows + 1}.png")
        overlay_grid_png(rows, label_map, path, f"{args.images.name}: {', '.join(results)}")
        print(path)


if __name__ == "__main__":
    main()
