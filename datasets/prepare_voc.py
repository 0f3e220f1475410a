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

from pixelclip.data import prepare_utils as pu

DATASET_DIR = "VOCdevkit/VOC2012"
EXPECTED_IMAGES = {"val": 1449, "train": 1464}
LUT_VOC20 = pu.lookup_table({k: k - 1 for k in range(1, 21)})
LUT_VOC21 = pu.lookup_table({k: k for k in range(0, 21)})


convert_label = pu.lut_converter(LUT_VOC20, LUT_VOC21)


def plan(args: argparse.Namespace, root: Path) -> pu.Conversion:
    voc = args.voc if args.voc is not None else root / DATASET_DIR
    out = root / DATASET_DIR
    hint = "Extract VOCtrainval_11-May-2012.tar and pass --voc .../VOCdevkit/VOC2012."
    pu.require_dir(voc / "SegmentationClass", "VOC SegmentationClass", hint)
    pu.require_dir(voc / "JPEGImages", "VOC JPEGImages", hint)
    ids = pu.read_id_list(voc / "ImageSets" / "Segmentation" / f"{args.split}.txt")
    labels = [out / "annotations_detectron2" / f"voc{n}_{args.split}" for n in (20, 21)]
    samples = pu.samples_from_ids(
        ids,
        voc / "JPEGImages",
        out / "JPEGImages",
        lambda i: voc / "SegmentationClass" / f"{i}.png",
        labels,
    )
    what = f"Pascal VOC {args.split}"
    return pu.Conversion(what, samples, convert_label, EXPECTED_IMAGES[args.split])


def main(argv: list[str] | None = None) -> int:
    """Convert the labels; 0 on success, 2 for a count mismatch with --strict."""
    voc = "extracted VOC2012 folder (with JPEGImages/, ImageSets/, SegmentationClass/)"
    folders = {"--voc": (voc, f"<root>/{DATASET_DIR}")}
    return pu.run(pu.build_parser(__doc__, EXPECTED_IMAGES, "val", folders), argv, plan)


if __name__ == "__main__":
    sys.exit(main())
