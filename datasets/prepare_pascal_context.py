#!/usr/bin/env python
"""Convert Pascal-Context labels to detectron2's Context-59 and Context-60 label PNGs.

Route: the official full annotation of PASCAL-Context (``trainval.tar.gz`` from
https://www.cs.stanford.edu/~roozbeh/pascal-context/), one MATLAB file ``trainval/<id>.mat`` per
image whose ``LabelMap`` holds the 459-class ids of the release's ``labels.txt``. Reading it needs
only scipy (no Detail API, no trainval_merged.json). The 59 frequent classes are picked by their
459-class ids (the table below, the one used by the Detail API based converters); every other
id is "background".
Images: ``VOCdevkit/VOC2010/JPEGImages`` of VOCtrainval_03-May-2010.tar; the split list is
``VOC2010/ImageSets/Main/<split>.txt`` (val: 5105 images).
Outputs under the dataset root, both from one pass:

* ``VOCdevkit/VOC2010/annotations_detectron2/pc59_<split>/``: the 59 classes -> 0..58,
  background -> 255 (Context-59: background ignored);
* ``VOCdevkit/VOC2010/annotations_detectron2/pc60_<split>/``: background -> 0, the 59 classes ->
  1..59 (Context-60);

and ``VOCdevkit/VOC2010/JPEGImages/`` (in place, or the split's images linked).

Example:
    python datasets/prepare_pascal_context.py --voc ~/Downloads/VOCdevkit/VOC2010 \\
        --context ~/Downloads/trainval
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import scipy.io

from pixelclip.data import prepare_utils as pu

DATASET_DIR = "VOCdevkit/VOC2010"
EXPECTED_IMAGES = {"val": 5105, "train": 4998}
MAT_KEY = "LabelMap"
NUM_FULL_CLASSES = 459
# 459-class ids (labels.txt) of the 59 classes, in the order of pascal_context_59.json
# (alphabetical in labels.txt; "table" of labels.txt is named "diningtable" in the 59 list).
CONTEXT59_FULL_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98,
    104, 105, 113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295,
    296, 308, 324, 326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440,
    445, 454, 458,
)  # fmt: skip
LUT_PC59 = pu.lookup_table(
    {full: k for k, full in enumerate(CONTEXT59_FULL_IDS)}, size=NUM_FULL_CLASSES + 1
)
LUT_PC60 = pu.lookup_table(
    {full: k + 1 for k, full in enumerate(CONTEXT59_FULL_IDS)}, default=0, size=NUM_FULL_CLASSES + 1
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--voc",
        type=Path,
        default=None,
        help="extracted VOC2010 folder (with JPEGImages/ and ImageSets/); "
        f"default: <root>/{DATASET_DIR}",
    )
    parser.add_argument(
        "--context",
        type=Path,
        default=None,
        help="folder of the Context .mat files (the trainval/ folder of trainval.tar.gz); "
        "default: <voc>/trainval",
    )
    parser.add_argument(
        "--split-file",
        type=Path,
        default=None,
        help="text file of image ids to convert; default: <voc>/ImageSets/Main/<split>.txt",
    )
    parser.add_argument(
        "--split",
        choices=sorted(EXPECTED_IMAGES),
        default="val",
        help="split to convert (default: val, the 5105-image benchmark)",
    )
    pu.add_common_args(parser)
    return parser


def read_label_map(path: Path) -> np.ndarray:
    """Read the (H, W) 459-class ``LabelMap`` of a Context .mat file."""
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several types for corrupt files
        raise ValueError(f"{path}: cannot read as a MATLAB file ({e})") from e
    if MAT_KEY not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: no {MAT_KEY!r} array (found {keys}); is it a Context .mat?")
    label = np.asarray(mat[MAT_KEY])
    if label.ndim != 2:
        raise ValueError(f"{path}: {MAT_KEY} must be 2-D, got shape {label.shape}")
    return label.astype(np.int64)


def convert_label(sample: pu.Sample) -> list[np.ndarray]:
    """Context .mat -> [Context-59 labels, Context-60 labels], each (H, W) uint8."""
    full = read_label_map(sample.label_src)
    return [pu.apply_lut(full, LUT_PC59, sample.label_src), pu.apply_lut(full, LUT_PC60)]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    root = pu.resolve_root(args.root)
    voc = args.voc if args.voc is not None else root / DATASET_DIR
    context = args.context if args.context is not None else voc / "trainval"
    split_file = args.split_file or voc / "ImageSets" / "Main" / f"{args.split}.txt"
    out = root / DATASET_DIR
    try:
        pu.require_dir(
            voc / "JPEGImages", "VOC2010 JPEGImages", "Extract VOCtrainval_03-May-2010.tar."
        )
        pu.require_dir(
            context, "Pascal-Context .mat folder", "Extract trainval.tar.gz and pass --context."
        )
        ids = pu.read_id_list(split_file)
    except FileNotFoundError as e:
        parser.error(str(e))
    ann = out / "annotations_detectron2"
    samples = [
        pu.Sample(
            key=i,
            image_src=voc / "JPEGImages" / f"{i}.jpg",
            image_dst=out / "JPEGImages" / f"{i}.jpg",
            label_src=context / f"{i}.mat",
            label_dsts=(
                ann / f"pc59_{args.split}" / f"{i}.png",
                ann / f"pc60_{args.split}" / f"{i}.png",
            ),
        )
        for i in ids
    ]
    summary = pu.convert_samples(
        samples,
        convert_label,
        link_mode=args.link_mode,
        overwrite=args.overwrite,
        desc=f"Pascal-Context {args.split}",
        progress=not args.quiet,
    )
    expected = EXPECTED_IMAGES[args.split] if args.split_file is None else None
    return pu.report(summary, expected, f"Pascal-Context {args.split}", args.strict)


if __name__ == "__main__":
    sys.exit(main())
