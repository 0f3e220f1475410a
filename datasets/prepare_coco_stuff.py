#!/usr/bin/env python
"""Convert COCO-Stuff (164k, 2017 splits) labels to detectron2's 171-class label PNGs.

Input: the official release, laid out as in the COCO-Stuff README
(https://github.com/nightrome/cocostuff): COCO images ``images/<split>/*.jpg`` (from
``val2017.zip``) and stuff+thing maps ``annotations/<split>/*.png`` (from
``stuffthingmaps_trainval2017.zip``). Those PNGs hold ``COCO category id - 1`` (0..181) with 255 =
unlabeled; 11 of the 182 ids are never used, leaving 171 classes (80 things + 91 stuff).
Output under the dataset root: ``coco-stuff/images/<split>/`` (in place, or linked) and
``coco-stuff/annotations_detectron2/<split>/*.png`` with the 171 used ids mapped in order to
0..170 and everything else to 255.

Example:
    python datasets/prepare_coco_stuff.py --images ~/coco/val2017 \\
        --stuffthingmaps ~/Downloads/stuffthingmaps_trainval2017/val2017
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pixelclip.data import prepare_utils as pu

DATASET_DIR = "coco-stuff"
EXPECTED_IMAGES = {"val2017": 5000, "train2017": 118287}
# COCO category ids (1-based) that no annotation uses: 11 of the 91 thing slots.
UNUSED_COCO_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
# PNG value = COCO id - 1 for ids 1..182; the used ones, in id order, become 0..170.
USED_PNG_VALUES = tuple(i - 1 for i in range(1, 183) if i not in UNUSED_COCO_IDS)
NUM_CLASSES = 171
LUT = pu.lookup_table({v: k for k, v in enumerate(USED_PNG_VALUES)})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of the split's COCO images (*.jpg); "
        f"default: <root>/{DATASET_DIR}/images/<split>",
    )
    parser.add_argument(
        "--stuffthingmaps",
        type=Path,
        default=None,
        help="folder of the split's official stuffthingmaps PNGs; "
        f"default: <root>/{DATASET_DIR}/annotations/<split>",
    )
    parser.add_argument(
        "--split",
        choices=sorted(EXPECTED_IMAGES),
        default="val2017",
        help="split to convert (default: val2017, the 5000-image benchmark)",
    )
    pu.add_common_args(parser)
    return parser


def convert_label(sample: pu.Sample) -> list[np.ndarray]:
    """stuffthingmaps PNG -> [(H, W) uint8 labels in 0..170 / 255]."""
    return [pu.apply_lut(pu.read_label_image(sample.label_src), LUT, sample.label_src)]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    root = pu.resolve_root(args.root)
    out = root / DATASET_DIR
    images = args.images if args.images is not None else out / "images" / args.split
    maps = args.stuffthingmaps
    if maps is None:
        maps = out / "annotations" / args.split
    try:
        pu.require_dir(images, "COCO images", "Pass --images (e.g. the extracted val2017.zip).")
        pu.require_dir(
            maps,
            "COCO-Stuff stuffthingmaps",
            "Pass --stuffthingmaps (the split folder of stuffthingmaps_trainval2017.zip).",
        )
    except FileNotFoundError as e:
        parser.error(str(e))
    samples = [
        pu.Sample(
            key=f.stem,
            image_src=images / f"{f.stem}.jpg",
            image_dst=out / "images" / args.split / f"{f.stem}.jpg",
            label_src=f,
            label_dsts=(out / "annotations_detectron2" / args.split / f.name,),
        )
        for f in sorted(maps.glob("*.png"))
    ]
    summary = pu.convert_samples(
        samples,
        convert_label,
        link_mode=args.link_mode,
        overwrite=args.overwrite,
        desc=f"COCO-Stuff {args.split}",
        progress=not args.quiet,
    )
    return pu.report(summary, EXPECTED_IMAGES[args.split], f"COCO-Stuff {args.split}", args.strict)


if __name__ == "__main__":
    sys.exit(main())
