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

from pixelclip.data import prepare_utils as pu

DATASET_DIR = "ADEChallengeData2016"
EXPECTED_IMAGES = {"validation": 2000, "training": 20210}
NUM_CLASSES = 150
# 0 ("other") is ignored; the 150 classes shift down by one.
LUT = pu.lookup_table({k: k - 1 for k in range(1, NUM_CLASSES + 1)})


convert_label = pu.lut_converter(LUT)


def plan(args: argparse.Namespace, root: Path) -> pu.Conversion:
    release = args.release if args.release is not None else root / DATASET_DIR
    hint = "Extract ADEChallengeData2016.zip."
    image_dir = pu.require_dir(release / "images" / args.split, "ADE20K images", hint)
    ann_dir = pu.require_dir(release / "annotations" / args.split, "ADE20K annotations", hint)
    labels = sorted(ann_dir.glob("*.png"))
    samples = pu.samples_from_labels(labels, image_dir, root / DATASET_DIR, args.split)
    what = f"ADE20K-150 {args.split}"
    return pu.Conversion(what, samples, convert_label, EXPECTED_IMAGES[args.split])


def main(argv: list[str] | None = None) -> int:
    """Convert the labels; 0 on success, 2 for a count mismatch with --strict."""
    release = "extracted ADEChallengeData2016 folder (with images/ and annotations/)"
    folders = {"--release": (release, f"<root>/{DATASET_DIR}")}
    parser = pu.build_parser(__doc__, EXPECTED_IMAGES, "validation", folders)
    return pu.run(parser, argv, plan)


if __name__ == "__main__":
    sys.exit(main())
