"""Pre-downscale SA-1B images and masks by a factor (the reference trains on half-size data).

Reads an SA-1B tree (``sa_000000/sa_1.jpg`` + ``sa_1.json`` ...) and writes the same tree with
every image and mask downscaled by ``--factor``:

- image: ``cv2.INTER_AREA`` to ``round(h / factor) x round(w / factor)``, JPEG ``--jpeg-quality``;
- masks: PIL-style nearest sampling of pixel centres (``floor((x + 0.5) * in / out)``, the rule
  of detectron2's mask resize), read directly from the RLE (no full-size decode), re-encoded as
  COCO RLE; ``area`` and ``bbox`` recomputed, ``point_coords`` and ``crop_box`` scaled, other
  fields kept; the ``image`` entry gets the new height / width.

Safe to interrupt and re-run: each file is written to a temporary name, read back and checked
(JPEG decodes to the expected size; JSON parses, its masks have the new size and valid runs),
then renamed; the JSON is written last, so an existing JSON marks a finished image and is
skipped on the next run (``--verify-existing`` re-checks finished images and redoes bad ones).
Unreadable inputs are reported and listed in ``<dst>/prepare_sa1b_failed.txt``; the exit code
is 1 when any image failed.

Example::

    python tools/prepare_sa1b.py --src /data/sa1b_full --dst datasets/sa1b --factor 2 \\
        --subset sa1b_5percent.txt --workers 8
"""

from __future__ import annotations

import argparse
import io
import json
import os
from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from detectron2.data.detection_utils import read_image
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from ..cli_help import HelpFormatter
from .masks import pil_nearest_indices, rle_counts, sample_rle_masks
from .sa1b import list_sa1b_images

FAILED_LIST = "prepare_sa1b_failed.txt"
MASK_CHUNK = 16  # masks re-encoded per chunk, bounds the memory of large images


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--src", required=True, help="SA-1B root to read")
    p.add_argument("--dst", required=True, help="output root (same layout)")
    p.add_argument("--factor", type=float, default=2.0, help="downscale factor (> 1), default 2")
    p.add_argument("--subset", default=None, help="subset list (ids or relative paths)")
    p.add_argument("--max-images", type=int, default=0, help="at most this many images (0 = all)")
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.add_argument(
        "--verify-existing", action="store_true", help="re-check finished images, redo bad ones"
    )
    args = p.parse_args(argv)
    if args.factor < 1:
        p.error(f"--factor must be >= 1, got {args.factor}")
    return args


def scaled_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """Output (h, w): each side divided by ``factor``, rounded half up, at least 1."""
    return max(1, int(height / factor + 0.5)), max(1, int(width / factor + 0.5))


def downscale_annotations(record: dict[str, Any], new_h: int, new_w: int, source: str) -> None:
    """Downscale every mask of an SA-1B record in place (see the module docstring)."""
    anns = record["annotations"]
    segs = [a["segmentation"] for a in anns]
    if not segs:
        return
    h, w = (int(v) for v in segs[0]["size"])
    rows, cols = pil_nearest_indices(h, new_h), pil_nearest_indices(w, new_w)
    sy, sx = new_h / h, new_w / w
    for start in range(0, len(segs), MASK_CHUNK):
        chunk = sample_rle_masks(segs[start : start + MASK_CHUNK], rows, cols, source=source)
        rles = mask_utils.encode(np.asfortranarray(chunk.transpose(1, 2, 0).astype(np.uint8)))
        for ann, rle in zip(anns[start : start + MASK_CHUNK], rles):
            ann["segmentation"] = {"size": [new_h, new_w], "counts": rle["counts"].decode()}
            ann["area"] = int(mask_utils.area(rle))
            ann["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
            if "point_coords" in ann:
                ann["point_coords"] = [[x * sx, y * sy] for x, y in ann["point_coords"]]
            if "crop_box" in ann:
                x, y, bw, bh = ann["crop_box"]
                ann["crop_box"] = [x * sx, y * sy, bw * sx, bh * sy]


def check_image_file(path: Path, size: tuple[int, int]) -> None:
    """Raise ValueError unless ``path`` decodes to an image of (h, w) ``size``."""
    with Image.open(path) as img:
        img.load()
        if (img.height, img.width) != size:
            raise ValueError(f"{path}: expected {size[0]}x{size[1]}, got {img.height}x{img.width}")


def check_json_file(path: Path, size: tuple[int, int], num_annotations: int | None) -> None:
    """Raise ValueError unless ``path`` is an SA-1B JSON whose masks are valid RLE of ``size``."""
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    anns = record["annotations"]
    if num_annotations is not None and len(anns) != num_annotations:
        raise ValueError(f"{path}: expected {num_annotations} annotations, found {len(anns)}")
    image = record.get("image", {})
    if "height" in image and (image["height"], image["width"]) != size:
        raise ValueError(f"{path}: 'image' entry is not {size[0]}x{size[1]}")
    segs = [a["segmentation"] for a in anns]
    if any(list(s["size"]) != list(size) for s in segs):
        raise ValueError(f"{path}: a mask is not {size[0]}x{size[1]}")
    rle_counts(segs, source=str(path))  # raises if the runs do not cover the image


def _write_verified(data: bytes, final: Path, check) -> None:
    """Write ``data`` to a temporary file next to ``final``, ``check`` it, then rename it."""
    tmp = final.parent / f".{final.name}.partial"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        check(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def existing_is_valid(image_out: Path, json_out: Path) -> bool:
    """Whether a finished output pair reads back consistently."""
    try:
        with open(json_out, encoding="utf-8") as f:
            image = json.load(f).get("image", {})
        with Image.open(image_out) as img:
            size = (img.height, img.width)
        if "height" in image and (image["height"], image["width"]) != size:
            return False
        check_image_file(image_out, size)
        check_json_file(json_out, size, None)
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def process_one(rel: str, args: argparse.Namespace) -> tuple[str, str, str]:
    """Downscale one image and its JSON; returns (rel, status, message)."""
    src, dst = Path(args.src), Path(args.dst)
    image_in, image_out = src / rel, dst / rel
    json_in, json_out = image_in.with_suffix(".json"), image_out.with_suffix(".json")
    if json_out.exists() and image_out.exists():
        if not args.verify_existing or existing_is_valid(image_out, json_out):
            return rel, "skipped", ""
    try:
        image = read_image(str(image_in), format="RGB")
        with open(json_in, encoding="utf-8") as f:
            record = json.load(f)
        h, w = image.shape[:2]
        new_h, new_w = scaled_size(h, w, args.factor)
        for i, ann in enumerate(record["annotations"]):
            if list(ann["segmentation"]["size"]) != [h, w]:
                raise ValueError(
                    f"{json_in}: annotation {i} has size {ann['segmentation']['size']}, "
                    f"the image is {h}x{w}"
                )
        downscale_annotations(record, new_h, new_w, str(json_in))
        record.setdefault("image", {}).update(height=new_h, width=new_w)
        small = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        buffer = io.BytesIO()
        Image.fromarray(small).save(buffer, format="JPEG", quality=args.jpeg_quality)
        payload = json.dumps(record, separators=(",", ":")).encode()
        image_out.parent.mkdir(parents=True, exist_ok=True)
        num = len(record["annotations"])
        _write_verified(buffer.getvalue(), image_out, lambda p: check_image_file(p, (new_h, new_w)))
        _write_verified(payload, json_out, lambda p: check_json_file(p, (new_h, new_w), num))
    except (OSError, ValueError, KeyError, TypeError, SyntaxError) as e:
        return rel, "failed", f"{type(e).__name__}: {e}"
    return rel, "written", ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    images = list_sa1b_images(args.src, args.subset, args.max_images)
    Path(args.dst).mkdir(parents=True, exist_ok=True)
    stats = {"written": 0, "skipped": 0, "failed": 0}
    failures = []
    work = partial(process_one, args=args)
    with Pool(args.workers) if args.workers > 1 else _Serial() as pool:
        results = pool.imap_unordered(work, images, chunksize=4)
        for rel, status, message in tqdm(results, total=len(images), desc="prepare SA-1B"):
            stats[status] += 1
            if status == "failed":
                failures.append(f"{rel}\t{message}")
                tqdm.write(f"failed: {rel}: {message}")
    failed_list = Path(args.dst) / FAILED_LIST
    if failures:
        failed_list.write_text("\n".join(sorted(failures)) + "\n")
    elif failed_list.exists():
        failed_list.unlink()
    print(
        f"SA-1B x1/{args.factor:g}: {stats['written']} written, {stats['skipped']} already done, "
        f"{stats['failed']} failed" + (f" (listed in {failed_list})" if failures else "")
    )
    return 1 if failures else 0


class _Serial:
    """Stand-in for a process pool with one worker (no subprocesses, easier to debug)."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def imap_unordered(func, items, chunksize: int = 1):
        return map(func, items)
