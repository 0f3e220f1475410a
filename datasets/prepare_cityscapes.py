#!/usr/bin/env python
"""Convert Cityscapes fine labels (``*_gtFine_labelIds.png``) to the 19 train ids.

Input: the extracted official release ``cityscapes/`` holding ``leftImg8bit/<split>/<city>/
*_leftImg8bit.png`` (leftImg8bit_trainvaltest.zip) and ``gtFine/<split>/<city>/
*_gtFine_labelIds.png`` (gtFine_trainvaltest.zip).
Output under the dataset root, in the layout cityscapesScripts' createTrainIdLabelImgs.py
produces (so detectron2's own Cityscapes loaders read it too):
``cityscapes/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` with train ids 0..18 and 255 for
every other label id, and ``cityscapes/leftImg8bit/<split>/`` (in place, or linked).
No cityscapesScripts install is needed: the id -> trainId table below follows the public label
definition (cityscapesscripts/helpers/labels.py).

Example:
    python datasets/prepare_cityscapes.py --release ~/Downloads/cityscapes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pixelclip.data import prepare_utils as pu

DATASET_DIR = "cityscapes"
EXPECTED_IMAGES = {"val": 500, "train": 2975}
LABEL_SUFFIX = "_gtFine_labelIds.png"
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"
IMAGE_SUFFIX = "_leftImg8bit.png"
# label id -> train id for the 19 evaluated classes; all other ids (unlabeled, ego vehicle,
# rectification border, out of roi, static, dynamic, ground, parking, rail track, guard rail,
# bridge, tunnel, polegroup, caravan, trailer, license plate) are ignored.
ID_TO_TRAIN_ID = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}
LUT = pu.lookup_table(ID_TO_TRAIN_ID)


convert_label = pu.lut_converter(LUT)


def plan(args: argparse.Namespace, root: Path) -> pu.Conversion:
    release = args.release if args.release is not None else root / DATASET_DIR
    out = root / DATASET_DIR
    hint = "Extract leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into one folder."
    image_dir = pu.require_dir(release / "leftImg8bit" / args.split, "Cityscapes images", hint)
    gt_dir = pu.require_dir(release / "gtFine" / args.split, "Cityscapes gtFine", hint)
    samples = []
    for f in sorted(gt_dir.glob(f"*/*{LABEL_SUFFIX}")):
        city, stem = f.parent.name, f.name[: -len(LABEL_SUFFIX)]
        samples.append(
            pu.Sample(
                key=f"{city}/{stem}",
                image_src=image_dir / city / f"{stem}{IMAGE_SUFFIX}",
                image_dst=out / "leftImg8bit" / args.split / city / f"{stem}{IMAGE_SUFFIX}",
                label_src=f,
                label_dsts=(out / "gtFine" / args.split / city / f"{stem}{TRAIN_ID_SUFFIX}",),
            )
        )
    what = f"Cityscapes {args.split}"
    return pu.Conversion(what, samples, convert_label, EXPECTED_IMAGES[args.split])


def main(argv: list[str] | None = None) -> int:
    """Convert the labels; 0 on success, 2 for a count mismatch with --strict."""
    release = "extracted Cityscapes folder (with leftImg8bit/ and gtFine/)"
    folders = {"--release": (release, f"<root>/{DATASET_DIR}")}
    return pu.run(pu.build_parser(__doc__, EXPECTED_IMAGES, "val", folders), argv, plan)


if __name__ == "__main__":
    sys.exit(main())
