#!/usr/bin/env python
"""Convert ADE20K-150 (ADEChallengeData2016) labels to detectron2's label PNGs.

Input: the extracted official release ``ADEChallengeData2016/`` holding ``images/<split>/*.jpg``
and ``annotations/<split>/*.png`` (0 = "other", 1..150 = classes).
Output under the dataset root: ``ADEChallengeData2016/images/<split>/`` (in place, or linked)
and ``ADEChallengeData2016/annotations_detectron2/<split>/*.png`` with 0 -> 255 (ignore) and
k -> k - 1 for k in 1..150.

Example:
    python datasets/prepare_ade20k_150.py --release ~/Downloads/ADEChallengeData2016
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pixelclip.data import prepare_utils as pu

DATASET_DIR = "ADEChallengeData2016"
EXPECTED_IMAGES = {"validation": 2000, "training": 20210}
NUM_CLASSES = 150
# 0 ("other") is ignored; the 150 classes shift down by one.
LUT = pu.lookup_table({k: k - 1 for k in range(1, NUM_CLASSES + 1)})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--release",
        type=Path,
        default=None,
        help=f"extracted ADEChallengeData2016 folder (with images/ and annotations/); "
        f"default: <root>/{DATASET_DIR}",
    )
    parser.add_argument(
        "--split",
        choices=sorted(EXPECTED_IMAGES),
        default="validation",
        help="split to convert (default: validation, the 2000-image benchmark)",
    )
    pu.add_common_args(parser)
    return parser


def convert_label(sample: pu.Sample) -> list[np.ndarray]:
    """Raw ADE annotation -> [(H, W) uint8 labels in 0..149 / 255]."""
    return [pu.apply_lut(pu.read_label_image(sample.label_src), LUT, sample.label_src)]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    root = pu.resolve_root(args.root)
    release = args.release if args.release is not None else root / DATASET_DIR
    out = root / DATASET_DIR
    try:
        image_dir = pu.require_dir(
            release / "images" / args.split, "ADE20K images", "Extract ADEChallengeData2016.zip."
        )
        ann_dir = pu.require_dir(
            release / "annotations" / args.split,
            "ADE20K annotations",
            "Extract ADEChallengeData2016.zip.",
        )
    except FileNotFoundError as e:
        parser.error(str(e))
    label_files = sorted(ann_dir.glob("*.png"))
    samples = [
        pu.Sample(
            key=f.stem,
            image_src=image_dir / f"{f.stem}.jpg",
            image_dst=out / "images" / args.split / f"{f.stem}.jpg",
            label_src=f,
            label_dsts=(out / "annotations_detectron2" / args.split / f.name,),
        )
        for f in label_files
    ]
    summary = pu.convert_samples(
        samples,
        convert_label,
        link_mode=args.link_mode,
        overwrite=args.overwrite,
        desc=f"ADE20K-150 {args.split}",
        progress=not args.quiet,
    )
    return pu.report(summary, EXPECTED_IMAGES[args.split], f"ADE20K-150 {args.split}", args.strict)


if __name__ == "__main__":
    sys.exit(main())
