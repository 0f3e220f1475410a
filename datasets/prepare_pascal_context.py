#!/usr/bin/env python
"""Convert Pascal-Context labels to detectron2's Context-59, Context-60 and Context-459 label PNGs.

Two routes to the same labels, both reading the 459-class ids of the release's ``labels.txt``
(1..459, 0 = unlabeled):

* the official full annotation of PASCAL-Context (``trainval.tar.gz`` from
  https://www.cs.stanford.edu/~roozbeh/pascal-context/): one MATLAB file ``trainval/<id>.mat`` per
  image whose ``LabelMap`` holds the ids (read with scipy);
* the PASCAL in Detail file ``trainval_merged.json`` (the one MMSegmentation and CAT-Seg convert
  Context-59 from), read here as plain JSON with pycocotools for its RLE masks (no Detail API);
  the split is then the file's ``phase`` of each image. It gives Context-459 too only if its
  ``categories`` list all 459 ids; otherwise Context-459 needs the .mat route.

Images: ``VOCdevkit/VOC2010/JPEGImages`` of VOCtrainval_03-May-2010.tar; the .mat route's split
list is ``VOC2010/ImageSets/Main/<split>.txt`` (val: 5105 images). Outputs under the dataset
root, from one pass (``--outputs`` to choose):

* ``VOCdevkit/VOC2010/annotations_detectron2/pc59_<split>/``: the 59 frequent classes, picked by
  their 459-class ids (the table below, the one of the Detail-API based converters) -> 0..58,
  every other id -> 255 (Context-59: background ignored);
* ``.../pc60_<split>/``: every other id -> 0 (background), the 59 classes -> 1..59 (Context-60);
* ``.../pc459_<split>/``: 16-bit PNGs, id k -> k - 1 (0..458), unlabeled (0) -> 65535 (ignored),
  as CAT-Seg's ``datasets/prepare_pascal_context_459.py`` (github.com/cvlab-kaist/CAT-Seg);

and ``VOCdevkit/VOC2010/JPEGImages/`` (in place, or the split's images linked).

Example:
    python datasets/prepare_pascal_context.py --voc ~/Downloads/VOCdevkit/VOC2010 \\
        --context ~/Downloads/trainval
    python datasets/prepare_pascal_context.py --json ~/Downloads/trainval_merged.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import scipy.io

from pixelclip.data import prepare_utils as pu
from pixelclip.data import release_formats as rf

logger = logging.getLogger("prepare_pascal_context")

DATASET_DIR = "VOCdevkit/VOC2010"
EXPECTED_IMAGES = {"val": 5105, "train": 4998}
MAT_KEY = "LabelMap"
JSON_NAME = "trainval_merged.json"
NUM_FULL_CLASSES = 459
# 459-class ids (labels.txt) of the 59 classes, in the order of pascal_context_59.json
# (alphabetical in labels.txt; "table" of labels.txt is named "diningtable" in the 59 list).
CONTEXT59_FULL_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98,
    104, 105, 113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295,
    296, 308, 324, 326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440,
    445, 454, 458,
)  # fmt: skip
LUTS = {
    "59": pu.lookup_table(
        {full: k for k, full in enumerate(CONTEXT59_FULL_IDS)}, size=NUM_FULL_CLASSES + 1
    ),
    "60": pu.lookup_table(
        {full: k + 1 for k, full in enumerate(CONTEXT59_FULL_IDS)},
        default=0,
        size=NUM_FULL_CLASSES + 1,
    ),
    "459": pu.lookup_table(
        {k: k - 1 for k in range(1, NUM_FULL_CLASSES + 1)},
        default=pu.IGNORE_LABEL_16BIT,
        size=NUM_FULL_CLASSES + 1,
        dtype=np.uint16,
    ),
}
OUTPUTS = tuple(LUTS)


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


def converter(outputs, read):
    """``convert`` of the samples: the sample's 459-class map (``read(sample)``, and the name of
    its source for errors) through the table of each output."""

    def convert(sample: pu.Sample) -> list[np.ndarray]:
        full, where = read(sample)
        return [pu.apply_lut(full, LUTS[o], where) for o in outputs]

    return convert


def json_route(args: argparse.Namespace, json_path: Path):
    """Image ids, missing ids, outputs, reader and label source of the JSON route."""
    index = rf.read_detail_json(json_path, None if args.split_file else {args.split})
    full = index.category_ids >= set(range(1, NUM_FULL_CLASSES + 1))
    outputs = list(dict.fromkeys(args.outputs or [o for o in OUTPUTS if full or o != "459"]))
    if "459" in outputs and not full:
        raise ValueError(
            f"{json_path}: its 'categories' do not list all {NUM_FULL_CLASSES} ids of labels.txt "
            f"({len(index.category_ids)} listed), so it cannot give Context-459; use the .mat "
            "files of trainval.tar.gz (--context)"
        )
    if not full and args.outputs is None:
        logger.warning("%s does not list all %d classes: writing Context-59 and -60 only",
                       json_path, NUM_FULL_CLASSES)  # fmt: skip
    listed = pu.read_id_list(args.split_file) if args.split_file else sorted(index.images)

    def read(sample: pu.Sample) -> tuple[np.ndarray, str]:
        image = index.images[sample.key]
        return rf.detail_class_map(index, image), f"{json_path}: image {sample.key}"

    def label_src(image_id: str) -> Path:
        return Path(json_path)  # the one file holds every label

    ids = [i for i in listed if i in index.images]
    missing = [i for i in listed if i not in index.images]
    return ids, missing, outputs, read, label_src


def mat_route(args: argparse.Namespace, voc: Path):
    """Image ids, missing ids, outputs, reader and label source of the .mat route."""
    context = args.context if args.context is not None else voc / "trainval"
    hint = f"Extract trainval.tar.gz and pass --context, or pass --json {JSON_NAME}."
    pu.require_dir(context, "Pascal-Context .mat folder", hint)
    ids = pu.read_id_list(args.split_file or voc / "ImageSets" / "Main" / f"{args.split}.txt")

    def read(sample: pu.Sample) -> tuple[np.ndarray, str]:
        return read_label_map(sample.label_src), str(sample.label_src)

    def label_src(image_id: str) -> Path:
        return context / f"{image_id}.mat"

    return ids, [], list(dict.fromkeys(args.outputs or OUTPUTS)), read, label_src


def plan(args: argparse.Namespace, root: Path) -> pu.Conversion:
    voc = args.voc if args.voc is not None else root / DATASET_DIR
    out = root / DATASET_DIR
    pu.require_dir(voc / "JPEGImages", "VOC2010 JPEGImages", "Extract VOCtrainval_03-May-2010.tar.")
    json_path = args.json
    if json_path is None and args.context is None and not (voc / "trainval").is_dir():
        json_path = voc / JSON_NAME if (voc / JSON_NAME).is_file() else None
    route = json_route(args, json_path) if json_path is not None else mat_route(args, voc)
    ids, missing, outputs, read, label_src = route
    labels = [out / "annotations_detectron2" / f"pc{o}_{args.split}" for o in outputs]
    samples = pu.samples_from_ids(ids, voc / "JPEGImages", out / "JPEGImages", label_src, labels)
    expected = EXPECTED_IMAGES[args.split] if args.split_file is None else None
    what = f"Pascal-Context-{'/'.join(outputs)} {args.split}"
    return pu.Conversion(what, samples, converter(outputs, read), expected, missing=missing)


def main(argv: list[str] | None = None) -> int:
    """Convert the labels; 0 on success, 2 for a count mismatch with --strict."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    folders = {
        "--voc": ("extracted VOC2010 folder (with JPEGImages/ and ImageSets/)",
                  f"<root>/{DATASET_DIR}"),
        "--context": ("folder of the Context .mat files (trainval/ of trainval.tar.gz)",
                      "<voc>/trainval"),
        "--json": (f"the PASCAL in Detail {JSON_NAME}, read instead of the .mat files",
                   f"<voc>/{JSON_NAME} when there is no .mat folder"),
        "--split-file": ("text file of the image ids to convert",
                         "<voc>/ImageSets/Main/<split>.txt; with --json the file's phase"),
    }  # fmt: skip
    parser = pu.build_parser(__doc__, EXPECTED_IMAGES, "val", folders)
    parser.add_argument(
        "--outputs",
        nargs="+",
        choices=OUTPUTS,
        default=None,
        help=pu.described_default(
            "benchmarks to write (Context-59, -60, -459)",
            "all three; from a JSON without the full label set 59 60",
        ),
    )
    return pu.run(parser, argv, plan)


if __name__ == "__main__":
    sys.exit(main())
