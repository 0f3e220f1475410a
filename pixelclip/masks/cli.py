#!/usr/bin/env python
"""Generate class-agnostic masks for a folder of your own images, as SA-1B-format JSON files.

PixelCLIP trains on unlabeled images plus class-agnostic masks. This tool makes those masks for
any image folder, with either source of the paper:

- ``--source sam``: segment-anything's automatic mask generator (SAM ViT-B/L/H from a local
  checkpoint, e.g. ``sam_vit_h_4b8939.pth``), like the SA-1B masks;
- ``--source dino``: k-means on DINO ViT-S/16 patch tokens (16 clusters; see
  ``pixelclip/data/dino_masks.py``) from a local ``dino_deitsmall16_pretrain.pth``.

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
import hashlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# Allow `python tools/generate_masks.py` from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixelclip.data.sa1b import printable_path  # noqa: E402
from pixelclip.data.sa1b_format import (  # noqa: E402
    read_sa1b_json,
    record_from_masks,
    write_sa1b_json,
)

logger = logging.getLogger("generate_masks")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
# Images without masks quoted by name after the summary line.
NO_MASK_NAMES_SHOWN = 20

# A mask function takes an RGB uint8 image (H, W, 3) and returns one dict per mask with a bool
# "segmentation" (H, W) and optional SA-1B extras (predicted_iou, stability_score, ...).
MaskFn = Callable[[np.ndarray], list[dict[str, Any]]]


def find_images(root: Path) -> list[Path]:
    """All images under ``root`` (recursive, case-insensitive extensions), sorted.

    Only regular files (or symlinks to them): FIFOs, devices, dangling symlinks and folders named
    like images are left out and logged once (``is_file`` only stats, it never opens).
    """
    named = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS]
    images = sorted(p for p in named if p.is_file())
    others = sorted(set(named) - set(images))
    if others:
        logger.warning(
            "left out %d entries named like images that are not regular files (FIFOs, devices, "
            "dangling symlinks or folders), e.g. %s",
            len(others),
            ", ".join(printable_path(p) for p in others[:3]),
        )
    return images


def output_paths(images: Sequence[Path], input_root: Path, output_root: Path | None) -> list[Path]:
    """JSON path of every image: ``<stem>.json`` next to it, or mirrored under ``output_root``.

    Raises:
        ValueError: two images map to the same JSON (e.g. ``a.jpg`` and ``a.png``).
    """
    outs = []
    for img in images:
        rel = img.relative_to(input_root).with_suffix(".json")
        outs.append((output_root / rel) if output_root is not None else img.with_suffix(".json"))
    seen: dict[Path, Path] = {}
    for img, out in zip(images, outs):
        if out in seen:
            raise ValueError(f"{seen[out]} and {img} would both write {out}; rename one of them")
        seen[out] = img
    return outs


def read_rgb(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) with the EXIF orientation applied (detectron2's reader)."""
    from detectron2.data.detection_utils import read_image

    image = read_image(str(path), format="RGB")
    return np.require(image, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])


def _existing_record(json_path: Path) -> dict[str, Any] | None:
    """The record of a finished JSON from an earlier run, or None when it must be (re)made."""
    if not json_path.is_file():
        return None
    try:
        return read_sa1b_json(json_path)
    except (ValueError, OSError) as e:
        logger.warning("regenerating %s: %s", printable_path(json_path), printable_path(str(e)))
        return None


def _resize_image(image: np.ndarray, max_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    if max_side <= 0 or max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def generate_masks(
    image_paths: Sequence[Path],
    mask_fn: MaskFn,
    out_paths: Sequence[Path],
    *,
    input_root: Path | None = None,
    max_side: int = 0,
    min_area: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    no_masks: list[Path] | None = None,
) -> tuple[int, int, int]:
    """Write one SA-1B JSON per image; the core of the CLI.

    Args:
        image_paths: images to process.
        mask_fn: RGB uint8 (h, w, 3) -> list of dicts with a bool (h, w) "segmentation".
        out_paths: JSON path of each image (same length as ``image_paths``).
        input_root: the image ids are hashes of the paths relative to this folder (default:
            of the file names). ``image.file_name`` is always the image's file name, as in SA-1B
            (the image sits next to its JSON, or at the mirrored place under the input folder).
        max_side: downscale images whose longest side exceeds this before ``mask_fn`` (0 = never).
        min_area: drop masks with fewer pixels (at the stored size).
        overwrite: regenerate JSONs that already exist.
        progress: show a tqdm progress bar.
        no_masks: if given, the images whose JSON holds no mask are appended to it (made now, or
            skipped because an earlier run made them); each is also logged as a warning.

    Returns:
        (processed, skipped, failed) counts.
    """
    from tqdm import tqdm

    if len(image_paths) != len(out_paths):
        raise ValueError("image_paths and out_paths must have the same length")
    processed = skipped = failed = 0
    bar = tqdm(list(zip(image_paths, out_paths)), disable=not progress, unit="img")
    for img_path, out_path in bar:
        existing = None if overwrite else _existing_record(out_path)
        if existing is not None:
            skipped += 1
            if not existing["annotations"]:
                logger.warning("no masks for %s (from an earlier run)", printable_path(img_path))
                if no_masks is not None:
                    no_masks.append(img_path)
            continue
        try:
            image = read_rgb(img_path)
        except Exception as e:  # PIL raises many types for corrupt files; all mean "unreadable"
            logger.error(
                "cannot read image %s: %s", printable_path(img_path), printable_path(str(e))
            )
            failed += 1
            continue
        height, width = image.shape[:2]
        masks = mask_fn(_resize_image(image, max_side))
        # A stable id from the relative path, so re-runs and partial runs agree (52 bits: exact
        # in JSON readers that use doubles).
        key = img_path.relative_to(input_root).as_posix() if input_root else img_path.name
        # The file name's own bytes (os.fsencode): str.encode() fails on names that are not UTF-8
        # and gives the same bytes for all others, so existing ids do not change.
        image_id = int(hashlib.sha1(os.fsencode(key)).hexdigest()[:13], 16)
        record = record_from_masks(masks, height, width, image_id, img_path.name, min_area)
        write_sa1b_json(out_path, record)
        processed += 1
        if not record["annotations"]:
            logger.warning("no masks for %s (its JSON has none)", printable_path(img_path))
            if no_masks is not None:
                no_masks.append(img_path)
        bar.set_postfix(masks=len(record["annotations"]))
    return processed, skipped, failed


def sam_mask_fn(sam: torch.nn.Module, **generator_kwargs: Any) -> MaskFn:
    """Mask function of segment-anything's ``SamAutomaticMaskGenerator`` around a built ``Sam``."""
    from segment_anything import SamAutomaticMaskGenerator

    generator = SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **generator_kwargs)

    def fn(image: np.ndarray) -> list[dict[str, Any]]:
        return generator.generate(image)

    return fn


def dino_mask_fn(generator: torch.nn.Module) -> MaskFn:
    """Mask function of a :class:`~pixelclip.data.dino_masks.DinoMaskGenerator` (empty clusters
    are dropped)."""

    def fn(image: np.ndarray) -> list[dict[str, Any]]:
        device = generator.pixel_mean.device
        x = torch.from_numpy(image).permute(2, 0, 1)[None].to(device)
        masks = generator(x, image.shape[:2])[0].cpu().numpy()
        return [{"segmentation": m} for m in masks if m.any()]

    return fn


def build_parser() -> argparse.ArgumentParser:
    from segment_anything import sam_model_registry

    p = argparse.ArgumentParser(
        description="Generate class-agnostic masks (SAM or DINO k-means) for a folder of images, "
        "one SA-1B-format JSON per image.",
        epilog="Exit code: 0, or 1 if every image failed or (--strict) any image failed; "
        "2 for usage errors.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
        from pixelclip.data.sam_weights import load_sam

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
    from pixelclip.data.dino_masks import DinoMaskGenerator

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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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


if __name__ == "__main__":
    sys.exit(main())
