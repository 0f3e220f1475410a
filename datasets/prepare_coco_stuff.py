#!/usr/bin/env python
"""Convert COCO-Stuff (164k, 2017 splits) labels to detectron2's 171-class label PNGs, and with
``--coco-object`` also to COCO-Object (background + the 80 thing classes).

Input: the official release, laid out as in the COCO-Stuff README
(https://github.com/nightrome/cocostuff): COCO images ``images/<split>/*.jpg`` (from
``val2017.zip``) and stuff+thing maps ``annotations/<split>/*.png`` (from
``stuffthingmaps_trainval2017.zip``). Those PNGs hold ``COCO category id - 1`` (0..181) with 255 =
unlabeled; 11 of the 182 ids are never used, leaving 171 classes (80 things + 91 stuff).
Output under the dataset root: ``coco-stuff/images/<split>/`` (in place, or linked) and
``coco-stuff/annotations_detectron2/<split>/*.png`` with the 171 used ids mapped in order to
0..170 and everything else to 255.

COCO-Object (``--coco-object``, written in the same pass to
``coco-stuff/annotations_detectron2/coco_object_<split>/*.png``) is the benchmark of the
training-free methods (GroupViT and its successors), built as GroupViT's
``convert_dataset/convert_coco_object.py`` (github.com/NVlabs/GroupViT) builds it from the same
maps: the 80 thing classes keep their order as 1..80, and every stuff class and the unlabeled
value 255 become 0 = background (so no pixel is ignored). The 11 unused PNG values never occur in
the release; GroupViT leaves them as they are, here they are ignored (255).

Example:
    python datasets/prepare_coco_stuff.py --images ~/coco/val2017 \\
        --stuffthingmaps ~/Downloads/stuffthingmaps_trainval2017/val2017 --coco-object
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from pixelclip.data import prepare_utils as pu

DATASET_DIR = "coco-stuff"
EXPECTED_IMAGES = {"val2017": 5000, "train2017": 118287}
# COCO category ids (1-based) that no annotation uses: 11 of the 91 thing slots.
UNUSED_COCO_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
# PNG value = COCO id - 1 for ids 1..182; the used ones, in id order, become 0..170.
USED_PNG_VALUES = tuple(i - 1 for i in range(1, 183) if i not in UNUSED_COCO_IDS)
NUM_CLASSES = 171
LUT = pu.lookup_table({v: k for k, v in enumerate(USED_PNG_VALUES)})
# COCO-Object: the first 80 used values are the things (COCO ids <= 90), the other 91 the stuff.
NUM_THINGS = 80
UNLABELED_PNG_VALUE = 255
LUT_OBJECT = pu.lookup_table(
    {
        UNLABELED_PNG_VALUE: 0,
        **{v: 0 for v in USED_PNG_VALUES[NUM_THINGS:]},
        **{v: k + 1 for k, v in enumerate(USED_PNG_VALUES[:NUM_THINGS])},
    }
)
OBJECT_DIR = "coco_object_{split}"  # under coco-stuff/annotations_detectron2/


convert_label = pu.lut_converter(LUT)
convert_label_and_object = pu.lut_converter(LUT, LUT_OBJECT)


def plan(args: argparse.Namespace, root: Path) -> pu.Conversion:
    out = root / DATASET_DIR
    images = args.images if args.images is not None else out / "images" / args.split
    maps = args.stuffthingmaps
    if maps is None:
        maps = out / "annotations" / args.split
    pu.require_dir(images, "COCO images", "Pass --images (e.g. the extracted val2017.zip).")
    hint = "Pass --stuffthingmaps (the split folder of stuffthingmaps_trainval2017.zip)."
    pu.require_dir(maps, "COCO-Stuff stuffthingmaps", hint)
    samples = pu.samples_from_labels(sorted(maps.glob("*.png")), images, out, args.split)
    what = f"COCO-Stuff {args.split}"
    if not args.coco_object:
        return pu.Conversion(what, samples, convert_label, EXPECTED_IMAGES[args.split])
    objects = out / "annotations_detectron2" / OBJECT_DIR.format(split=args.split)
    samples = [
        dataclasses.replace(s, label_dsts=(*s.label_dsts, objects / s.label_dsts[0].name))
        for s in samples
    ]
    what = f"COCO-Stuff and COCO-Object {args.split}"
    return pu.Conversion(what, samples, convert_label_and_object, EXPECTED_IMAGES[args.split])


def main(argv: list[str] | None = None) -> int:
    """Convert the labels; 0 on success, 2 for a count mismatch with --strict."""
    folders = {
        "--images": (
            "folder of the split's COCO images (*.jpg)",
            f"<root>/{DATASET_DIR}/images/<split>",
        ),
        "--stuffthingmaps": (
            "folder of the split's official stuffthingmaps PNGs",
            f"<root>/{DATASET_DIR}/annotations/<split>",
        ),
    }
    parser = pu.build_parser(__doc__, EXPECTED_IMAGES, "val2017", folders)
    parser.add_argument(
        "--coco-object",
        action="store_true",
        help="also write the COCO-Object labels (background + 80 things) to "
        f"<root>/{DATASET_DIR}/annotations_detectron2/coco_object_<split>/",
    )
    return pu.run(parser, argv, plan)


if __name__ == "__main__":
    sys.exit(main())
