"""``tools/generate_masks.py``: class-agnostic masks for a folder of images, as SA-1B JSON files.

PixelCLIP trains on unlabeled images plus class-agnostic masks. This tool makes those masks for
any image folder, with either source of the paper:

- ``--source sam``: segment-anything's automatic mask generator (SAM ViT-B/L/H from a local
  checkpoint, e.g. ``sam_vit_h_4b8939.pth``), like the SA-1B masks;
- ``--source dino``: k-means on DINO ViT-S/16 patch tokens (16 clusters; see
  ``pixelclip/masks/dino.py``) from a local ``dino_deitsmall16_pretrain.pth``.

One JSON per image (``<stem>.json`` next to the image, or at the same relative path in a parallel
tree under ``--output``), in the SA-1B release format read by the training pipeline
(``pixelclip/data/sa1b_format.py``). To train on an ``--output`` tree, set ``DATASETS.SA1B.ROOT``
to the ``--input`` folder and ``DATASETS.SA1B.ANNOTATION_ROOT`` to the ``--output`` folder (the
SA-1B loader lists the same image types as this tool, at any depth).

Behaviour worth knowing:

- Images (jpg, jpeg, png, webp; searched recursively) are read with their EXIF orientation applied
  and converted to RGB; the JSON's height/width are those of the oriented image. As in SA-1B,
  ``image.file_name`` is the image's file name (the image sits next to its JSON, or at the
  mirrored place under ``--input``); ``image_id`` is a stable hash of the path under ``--input``.
- Masks the mask model leaves empty, or smaller than ``--min-area``, are not stored; an image
  with no masks still gets a JSON (with an empty list), so it is not redone on resume. Such
  images are logged and listed after the summary (also those found from an earlier run): the
  training loader skips them.
- ``--max-side``: larger images are downscaled (longest side) before mask generation; the masks
  are then nearest-upsampled back, so they are ALWAYS stored at the image's own size and align
  with the image file without any special case in the data loader.
- Resumable: an image whose JSON already exists and parses is skipped (``--overwrite`` redoes it).
  Every JSON is written atomically, so an interrupted run never leaves a half-written file.
- An unreadable or corrupt image is logged with its path, counted as failed, and the run goes on.
  Errors of the mask model itself stop the run (they would hit every image).
- The summary line is ``processed N, skipped S, failed F, no masks E``, followed by the images
  without masks when E > 0. The exit code is 0, or 1 if every image failed or (with
  ``--strict``) if any image failed.
- File names that are not valid UTF-8 work; messages show their undecodable bytes as ``\\xNN``.
  Entries named like images that are not regular files (FIFOs, devices, dangling symlinks) are
  left out with a warning: opening a FIFO would block forever.

Example::

    python tools/generate_masks.py --input photos/ --output masks/ --source sam \\
        --sam-model vit_h --sam-checkpoint weights/sam_vit_h_4b8939.pth --device cuda
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cli_help import HelpFormatter
from ..data.sa1b import printable_path
from .writer import IMAGE_EXTENSIONS, MaskFn, find_images, generate_masks, output_paths

logger = logging.getLogger(__name__)

# Images without masks quoted by name after the summary line.
NO_MASK_NAMES_SHOWN = 20


def build_parser() -> argparse.ArgumentParser:
    from segment_anything import sam_model_registry

    p = argparse.ArgumentParser(
        description="Generate class-agnostic masks (SAM or DINO k-means) for a folder of images, "
        "one SA-1B-format JSON per image.",
        epilog="Exit code: 0, or 1 if every image failed or (--strict) any image failed; "
        "2 for usage errors.",
        formatter_class=HelpFormatter,
    )
    io = p.add_argument_group("input / output")
    io.add_argument(
        "--input",
        required=True,
        type=Path,
        help="folder of images (jpg/jpeg/png/webp), searched recursively",
    )
    io.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder for the JSONs, mirroring the input tree "
        "(default: <stem>.json next to each image)",
    )
    io.add_argument("--source", required=True, choices=["sam", "dino"], help="mask source")
    io.add_argument(
        "--max-side",
        type=int,
        default=1024,
        help="downscale images whose longest side exceeds this before mask generation "
        "(0 = never); masks are stored at the image's own size either way",
    )
    io.add_argument(
        "--min-area",
        type=int,
        default=0,
        help="drop masks with fewer pixels than this (at the stored size)",
    )
    io.add_argument(
        "--overwrite",
        action="store_true",
        help="regenerate JSONs that already exist (default: skip them)",
    )
    io.add_argument("--strict", action="store_true", help="exit with 1 if any image failed")
    io.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device for the mask model",
    )
    io.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    sam = p.add_argument_group("SAM (--source sam)")
    sam.add_argument(
        "--sam-checkpoint",
        type=Path,
        default=None,
        help="local SAM checkpoint, e.g. sam_vit_h_4b8939.pth (required for sam)",
    )
    sam.add_argument(
        "--sam-model",
        default="auto",
        choices=["auto", *sorted(sam_model_registry)],
        help="architecture in segment_anything's sam_model_registry; auto: read from the "
        "checkpoint (vit_b / vit_l / vit_h by the image encoder's width)",
    )
    sam.add_argument("--points-per-side", type=int, default=32, help="point grid per side")
    sam.add_argument(
        "--points-per-batch",
        type=int,
        default=64,
        help="points run through the decoder at once (memory vs speed)",
    )
    sam.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=0.88,
        help="keep masks with predicted IoU above this",
    )
    sam.add_argument(
        "--stability-score-thresh",
        type=float,
        default=0.95,
        help="keep masks with stability score above this",
    )
    sam.add_argument(
        "--stability-score-offset",
        type=float,
        default=1.0,
        help="logit offset for the stability score",
    )
    sam.add_argument(
        "--box-nms-thresh",
        type=float,
        default=0.7,
        help="box IoU threshold of the duplicate-removing NMS",
    )
    sam.add_argument(
        "--crop-n-layers",
        type=int,
        default=0,
        help="extra layers of image crops (0 = whole image only)",
    )
    sam.add_argument(
        "--crop-n-points-downscale-factor",
        type=int,
        default=1,
        help="point grid reduction per crop layer",
    )
    sam.add_argument(
        "--min-mask-region-area",
        type=int,
        default=0,
        help="SAM post-processing: remove islands/holes smaller than this (0 = off)",
    )

    dino = p.add_argument_group("DINO (--source dino)")
    dino.add_argument(
        "--dino-weights",
        type=Path,
        default=None,
        help="local DINO ViT-S/16 weights (dino_deitsmall16_pretrain.pth or a timm "
        ".safetensors; required for dino)",
    )
    dino.add_argument(
        "--dino-model", default="vit_small_patch16_224.dino", help="timm model name of the DINO ViT"
    )
    dino.add_argument("--num-clusters", type=int, default=16, help="k-means clusters = masks")
    dino.add_argument("--kmeans-iters", type=int, default=20, help="k-means iterations")
    dino.add_argument(
        "--dino-resolution",
        type=int,
        default=640,
        help="square input side of the DINO ViT (multiple of 16; default: %(default)s)",
    )
    dino.add_argument("--seed", type=int, default=0, help="k-means seed")
    return p


def _check_model_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.source == "sam" and (args.sam_checkpoint is None or not args.sam_checkpoint.is_file()):
        parser.error(
            f"--source sam needs an existing --sam-checkpoint FILE (got {args.sam_checkpoint})"
        )
    if args.source == "dino" and (args.dino_weights is None or not args.dino_weights.is_file()):
        parser.error(
            f"--source dino needs an existing --dino-weights FILE (got {args.dino_weights})"
        )


def build_mask_fn(args: argparse.Namespace, parser: argparse.ArgumentParser) -> MaskFn:
    """The mask function selected by the CLI arguments (loads the model onto ``args.device``)."""
    _check_model_args(args, parser)
    if args.source == "sam":
        from .sam import load_sam, sam_mask_fn

        model = load_sam(args.sam_checkpoint, args.sam_model)
        return sam_mask_fn(
            model.to(args.device).eval(),
            points_per_side=args.points_per_side,
            points_per_batch=args.points_per_batch,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_score_thresh,
            stability_score_offset=args.stability_score_offset,
            box_nms_thresh=args.box_nms_thresh,
            crop_n_layers=args.crop_n_layers,
            crop_n_points_downscale_factor=args.crop_n_points_downscale_factor,
            min_mask_region_area=args.min_mask_region_area,
        )
    from .dino import DinoMaskGenerator, dino_mask_fn

    generator = DinoMaskGenerator(
        model_name=args.dino_model,
        weights=str(args.dino_weights),
        num_clusters=args.num_clusters,
        kmeans_iters=args.kmeans_iters,
        resolution=args.dino_resolution,
        seed=args.seed,
    )
    return dino_mask_fn(generator.to(args.device))


def main(argv: Sequence[str] | None = None, mask_fn: MaskFn | None = None) -> int:
    """Run the CLI; returns the exit code.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).
        mask_fn: use this mask function instead of building one from the arguments (for
            programmatic use with a model already in memory, and for tests).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.input.is_dir():
        parser.error(f"--input {args.input} is not a folder")
    images = find_images(args.input)
    if not images:
        parser.error(f"no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images under {args.input}")
    try:
        outs = output_paths(images, args.input, args.output)
    except ValueError as e:
        parser.error(str(e))
    if mask_fn is None:
        # Built on first use: a resumed run with nothing left to do never loads the model.
        models: list[MaskFn] = []

        def mask_fn(image: np.ndarray) -> list[dict[str, Any]]:
            if not models:
                try:
                    models.append(build_mask_fn(args, parser))
                except (OSError, ValueError) as e:  # a refused or damaged weight file: stop now
                    parser.error(f"cannot load the {args.source} model: {e}")
            return models[0](image)

        _check_model_args(args, parser)
    logger.info("%d images under %s, source %s", len(images), args.input, args.source)
    no_masks: list[Path] = []
    processed, skipped, failed = generate_masks(
        images,
        mask_fn,
        outs,
        input_root=args.input,
        max_side=args.max_side,
        min_area=args.min_area,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        no_masks=no_masks,
    )
    print(f"processed {processed}, skipped {skipped}, failed {failed}, no masks {len(no_masks)}")
    if no_masks:
        names = [printable_path(p.relative_to(args.input)) for p in no_masks]
        more = len(names) - NO_MASK_NAMES_SHOWN
        print(
            "images without masks (the training loader skips them): "
            + ", ".join(names[:NO_MASK_NAMES_SHOWN])
            + (f" and {more} more" if more > 0 else "")
        )
    if failed and (args.strict or processed + skipped == 0):
        return 1
    return 0
