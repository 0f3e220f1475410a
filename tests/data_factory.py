"""Generators of small SA-1B-format folders for tests (real formats: JPEG + JSON with COCO RLE).

Import it from a test module as ``import data_factory`` (pytest puts ``tests/`` on ``sys.path``
because the folder has no ``__init__.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def random_masks(height: int, width: int, num: int, seed: int = 0) -> np.ndarray:
    """``num`` random ellipses and rectangles (some touching the border), bool (num, H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    masks = np.zeros((num, height, width), dtype=bool)
    for k in range(num):
        cy, cx = rng.uniform(-0.1, 1.1) * height, rng.uniform(-0.1, 1.1) * width
        ry, rx = rng.uniform(0.05, 0.5) * height, rng.uniform(0.05, 0.5) * width
        if k % 2:
            masks[k] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        else:
            masks[k] = (abs(yy - cy) < ry) & (abs(xx - cx) < rx)
    if num:
        masks[0] = False
        masks[0, : height // 3, : width // 4] = True  # a corner mask, flips must move it
    return masks


def encode(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO compressed RLE of (N, H, W) masks, counts as ``str`` (as in SA-1B JSON)."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode()} for r in rles]


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth uint8 (H, W, 3) RGB image (compresses well, survives JPEG)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width] / max(height, width)
    base = rng.uniform(0, 255, 3)
    img = base + 80 * np.stack([np.sin(6 * yy), np.cos(5 * xx), np.sin(4 * (xx + yy))], -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_sample(
    folder: str | Path,
    stem: str,
    height: int = 64,
    width: int = 64,
    num_masks: int = 6,
    seed: int = 0,
    mode: str = "RGB",
    exif_orientation: int | None = None,
    masks: np.ndarray | None = None,
    mask_size: tuple[int, int] | None = None,
    image_entry: bool = True,
) -> dict[str, Any]:
    """Write ``stem.jpg`` (or ``.png`` for RGBA) and ``stem.json`` in ``folder``.

    Args:
        height, width: size of the *stored* pixel grid.
        mode: PIL mode of the stored image: "RGB", "L" (JPEG) or "RGBA" (PNG, since JPEG has no
            alpha channel).
        exif_orientation: EXIF orientation tag to store (JPEG only); masks are still made on the
            grid given by ``mask_size`` (default: the EXIF-corrected image).
        masks: explicit bool (N, h, w) masks; default :func:`random_masks`.
        mask_size: (h, w) of the masks; default: the EXIF-corrected size.
        image_entry: write the JSON "image" entry.

    Returns:
        ``{"file_name", "annotation_file", "image_id", "masks", "image"}`` (masks bool (N, h, w),
        image: the stored uint8 array).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rotated = exif_orientation in (5, 6, 7, 8)
    shown = (width, height) if rotated else (height, width)
    mask_size = mask_size or shown
    if masks is None:
        masks = random_masks(*mask_size, num_masks, seed=seed)
    rgb = random_image(height, width, seed)
    img = Image.fromarray(rgb)
    if mode == "L":
        img = img.convert("L")
    elif mode == "RGBA":
        img = img.convert("RGBA")
    suffix = ".png" if mode == "RGBA" else ".jpg"
    image_path = folder / f"{stem}{suffix}"
    if suffix == ".png":
        img.save(image_path)
    else:
        exif = Image.Exif()
        if exif_orientation is not None:
            exif[0x0112] = exif_orientation
        img.save(image_path, quality=95, exif=exif)
    stored = np.asarray(Image.open(image_path))
    record: dict[str, Any] = {
        "annotations": [
            {"id": i, "segmentation": seg, "area": int(m.sum()), "bbox": [0, 0, 1, 1]}
            for i, (seg, m) in enumerate(zip(encode(masks), masks))
        ]
    }
    if image_entry:
        record["image"] = {
            "image_id": seed,
            "file_name": image_path.name,
            "height": shown[0],
            "width": shown[1],
        }
    json_path = folder / f"{stem}.json"
    json_path.write_text(json.dumps(record))
    return {
        "file_name": str(image_path),
        "annotation_file": str(json_path),
        "image_id": stem,
        "masks": masks,
        "image": stored,
    }


def write_sa1b_folder(
    root: str | Path, shards: dict[str, int], height: int = 64, width: int = 64, num_masks: int = 6
) -> list[dict[str, Any]]:
    """An SA-1B tree: ``{"sa_000000": 3}`` writes sa_000000/sa_1.jpg ... sa_3.jpg (+ JSON).

    Image numbers continue across shards, as in the release. Returns :func:`write_sample`'s dicts.
    """
    samples = []
    number = 1
    for shard, count in shards.items():
        for _ in range(count):
            samples.append(
                write_sample(
                    Path(root) / shard, f"sa_{number}", height, width, num_masks, seed=number
                )
            )
            number += 1
    return samples
