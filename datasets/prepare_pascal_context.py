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


convert_label = pu.lut_converter(LUT_PC59, LUT_PC60, read=read_label_map)


def plan(args: argparse.Namespace, root: Path) -> pu.Conversion:
    voc = args.voc if args.voc is not None else root / DATASET_DIR
    context = args.context if args.context is not None else voc / "trainval"
    split_file = args.split_file or voc / "ImageSets" / "Main" / f"{args.split}.txt"
    out = root / DATASET_DIR
    pu.require_dir(voc / "JPEGImages", "VOC2010 JPEGImages", "Extract VOCtrainval_03-May-2010.tar.")
    hint = "Extract trainval.tar.gz and pass --context."
    pu.require_dir(context, "Pascal-Context .mat folder", hint)
    ids = pu.read_id_list(split_file)
    labels = [out / "annotations_detectron2" / f"pc{n}_{args.split}" for n in (59, 60)]
    samples = pu.samples_from_ids(
        ids, voc / "JPEGImages", out / "JPEGImages", lambda i: context / f"{i}.mat", labels
    )
    expected = EXPECTED_IMAGES[args.split] if args.split_file is None else None
    return pu.Conversion(f"Pascal-Context {args.split}", samples, convert_label, expected)


def main(argv: list[str] | None = None) -> int:
    """Convert the labels; 0 on success, 2 for a count mismatch with --strict."""
    folders = {
        "--voc": f"extracted VOC2010 folder (with JPEGImages/ and ImageSets/); default: "
        f"<root>/{DATASET_DIR}",
        "--context": "folder of the Context .mat files (the trainval/ folder of trainval.tar.gz); "
        "default: <voc>/trainval",
        "--split-file": "text file of image ids to convert; "
        "default: <voc>/ImageSets/Main/<split>.txt",
    }
    return pu.run(pu.build_parser(__doc__, EXPECTED_IMAGES, "val", folders), argv, plan)


if __name__ == "__main__":
    sys.exit(main())
