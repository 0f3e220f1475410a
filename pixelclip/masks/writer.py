"""The resumable writer behind ``tools/generate_masks.py``: one SA-1B-format JSON per image.

:func:`generate_masks` runs a mask function over a list of images and writes each result
atomically (``pixelclip.data.sa1b_format``); an image whose JSON exists and parses is skipped, so
an interrupted run resumes. :func:`find_images` lists a folder's images and :func:`output_paths`
places each JSON next to its image or in a mirrored tree. The mask functions themselves come from
:mod:`pixelclip.masks.sam` and :mod:`pixelclip.masks.dino`; the command-line front end is
:mod:`pixelclip.masks.cli`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.sa1b import printable_path
from ..data.sa1b_format import read_sa1b_json, record_from_masks, write_sa1b_json
from ..logs import progress as progress_bar

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
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
    if len(image_paths) != len(out_paths):
        raise ValueError("image_paths and out_paths must have the same length")
    processed = skipped = failed = 0
    pairs = list(zip(image_paths, out_paths))
    with progress_bar(pairs, disable=not progress, unit="img") as bar:
        for img_path, out_path in bar:
            existing = None if overwrite else _existing_record(out_path)
            if existing is not None:
                skipped += 1
                if not existing["annotations"]:
                    logger.warning(
                        "no masks for %s (from an earlier run)", printable_path(img_path)
                    )
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
            # The file name's own bytes (os.fsencode): str.encode() fails on names that are not
            # UTF-8 and gives the same bytes for all others, so existing ids do not change.
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
