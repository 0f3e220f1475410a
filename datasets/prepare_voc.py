#!/usr/bin/env python
"""Convert Pascal VOC 2012 segmentation labels to detectron2's VOC-20 and VOC-21 label PNGs.

Input: the extracted official release ``VOCdevkit/VOC2012/`` (VOCtrainval_11-May-2012.tar) with
``JPEGImages/``, ``ImageSets/Segmentation/<split>.txt`` and ``SegmentationClass/*.png``. Those
are palette PNGs whose indices are 0 = background, 1..20 = classes, 255 = object border; the
indices are read directly (never through the colours).
Outputs under the dataset root, both from one pass:

* ``VOCdevkit/VOC2012/annotations_detectron2/voc20_<split>/``: background -> 255, k -> k - 1
  (VOC-20: background ignored);
* ``VOCdevkit/VOC2012/annotations_detectron2/voc21_<split>/``: values kept, 0 = background
  (VOC-21);

and ``VOCdevkit/VOC2012/JPEGImages/`` (in place, or the split's images linked).

Example:
    python datasets/prepare_voc.py --voc ~/Downloads/VOCdevkit/VOC2012
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pixelclip.data import prepare_utils as pu

DATASET_DIR = "VOCdevkit/VOC2012"
EXPECTED_IMAGES = {"val": 1449, "train": 1464}
LUT_VOC20 = pu.lookup_table({k: k - 1 for k in range(1, 21)})
LUT_VOC21 = pu.lookup_table({k: k for k in range(0, 21)})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--voc",
        type=Path,
        default=None,
        help=f"extracted VOC2012 folder (with JPEGImages/, ImageSets/, SegmentationClass/); "
        f"default: <root>/{DATASET_DIR}",
    )
    parser.add_argument(
        "--split",
        choices=sorted(EXPECTED_IMAGES),
        default="val",
        help="split to convert (default: val, the 1449-image benchmark)",
    )
    pu.add_common_args(parser)
    return parser


def convert_label(sample: pu.Sample) -> list[np.ndarray]:
    """SegmentationClass PNG -> [VOC-20 labels, VOC-21 labels], each (H, W) uint8."""
    raw = pu.read_label_image(sample.label_src)
    return [pu.apply_lut(raw, LUT_VOC20, sample.label_src), pu.apply_lut(raw, LUT_VOC21)]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    root = pu.resolve_root(args.root)
    voc = args.voc if args.voc is not None else root / DATASET_DIR
    out = root / DATASET_DIR
    hint = "Extract VOCtrainval_11-May-2012.tar and pass --voc .../VOCdevkit/VOC2012."
    try:
        pu.require_dir(voc / "SegmentationClass", "VOC SegmentationClass", hint)
        pu.require_dir(voc / "JPEGImages", "VOC JPEGImages", hint)
        ids = pu.read_id_list(voc / "ImageSets" / "Segmentation" / f"{args.split}.txt")
    except FileNotFoundError as e:
        parser.error(str(e))
    ann = out / "annotations_detectron2"
    samples = [
        pu.Sample(
            key=i,
            image_src=voc / "JPEGImages" / f"{i}.jpg",
            image_dst=out / "JPEGImages" / f"{i}.jpg",
            label_src=voc / "SegmentationClass" / f"{i}.png",
            label_dsts=(
                ann / f"voc20_{args.split}" / f"{i}.png",
                ann / f"voc21_{args.split}" / f"{i}.png",
            ),
        )
        for i in ids
    ]
    summary = pu.convert_samples(
        samples,
        convert_label,
        link_mode=args.link_mode,
        overwrite=args.overwrite,
        desc=f"VOC2012 {args.split}",
        progress=not args.quiet,
    )
    return pu.report(summary, EXPECTED_IMAGES[args.split], f"Pascal VOC {args.split}", args.strict)


if __name__ == "__main__":
    sys.exit(main())
