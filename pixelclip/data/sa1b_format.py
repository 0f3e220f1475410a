"""Writing and reading one SA-1B-format mask file (one JSON per image).

The layout follows the SA-1B release (https://ai.meta.com/datasets/segment-anything/, "Dataset
format" in segment-anything's README)::

    {
      "image": {"image_id": int, "file_name": str, "height": int, "width": int},
      "annotations": [
        {
          "id": int,
          "segmentation": {"size": [h, w], "counts": str},   # COCO RLE (compressed)
          "area": int,                                        # pixels in the mask
          "bbox": [x, y, w, h],                               # XYWH, floats
          "predicted_iou": float,      # optional (SAM only)
          "stability_score": float,    # optional (SAM only)
          "point_coords": [[x, y]],    # optional (SAM only)
          "crop_box": [x, y, w, h],    # optional (SAM only)
        },
        ...
      ]
    }

The RLE is COCO's compressed run-length encoding as produced by ``pycocotools.mask.encode``, with
``counts`` decoded to a ``str`` so that it can be stored in JSON (exactly as in SA-1B).
Files are written atomically: a temporary file in the destination folder, then ``os.replace``,
so a crash never leaves a half-written JSON behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from ..checkpoint.safe_io import write_atomically
from .masks import as_dimension

__all__ = [
    "encode_mask",
    "decode_segmentation",
    "make_annotation",
    "make_record",
    "write_sa1b_json",
    "read_sa1b_json",
    "decode_masks",
    "record_from_masks",
]


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Encode one binary mask as COCO compressed RLE with a ``str`` counts field.

    Args:
        mask: bool or {0, 1} array of shape (H, W).

    Returns:
        ``{"size": [H, W], "counts": str}``.
    """
    if mask.ndim != 2:
        raise ValueError(f"encode_mask expects a (H, W) mask, got shape {tuple(mask.shape)}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8, copy=False)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def decode_segmentation(segmentation: dict[str, Any]) -> np.ndarray:
    """Decode one ``{"size", "counts"}`` COCO RLE into a bool array of shape (H, W)."""
    rle = {"size": list(segmentation["size"]), "counts": segmentation["counts"]}
    if isinstance(rle["counts"], str):
        rle["counts"] = rle["counts"].encode()
    return mask_utils.decode(rle).astype(bool)


def make_annotation(mask: np.ndarray, ann_id: int, **extra: Any) -> dict[str, Any]:
    """One SA-1B annotation for a binary mask; ``area`` and ``bbox`` are computed from the mask.

    Args:
        mask: bool array (H, W).
        ann_id: the annotation id (unique within the file).
        **extra: optional SA-1B fields (``predicted_iou``, ``stability_score``, ``point_coords``,
            ``crop_box``); numpy scalars/arrays are converted to plain Python types.
    """
    segmentation = encode_mask(mask)
    rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
    ann: dict[str, Any] = {
        "id": int(ann_id),
        "segmentation": segmentation,
        "area": int(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
    }
    for key, value in extra.items():
        ann[key] = _to_builtin(value)
    return ann


def make_record(
    image_id: int, file_name: str, height: int, width: int, annotations: list[dict[str, Any]]
) -> dict[str, Any]:
    """The whole JSON record of one image (see the module docstring)."""
    return {
        "image": {
            "image_id": int(image_id),
            "file_name": str(file_name),
            "height": int(height),
            "width": int(width),
        },
        "annotations": annotations,
    }


def write_sa1b_json(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` atomically (``checkpoint.safe_io.write_atomically``), creating
    the parent folder if needed."""
    text = json.dumps(record, separators=(",", ":")).encode("utf-8")
    write_atomically(path, lambda f: f.write(text))


def read_sa1b_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate the structure of one SA-1B-format JSON (masks are not decoded).

    Raises:
        ValueError: the file is not valid UTF-8 JSON, lacks a required key, or has a height,
            width or mask size that is not a positive integer; the message names the file and
            what was expected.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    # UnicodeDecodeError: not UTF-8; RecursionError: nested too deeply for the parser.
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(record, dict) or not isinstance(record.get("annotations"), list):
        raise ValueError(f"{path}: expected a JSON object with an 'annotations' list")
    image = record.get("image")
    if image is not None:
        if not isinstance(image, dict) or any(
            as_dimension(image.get(k)) is None for k in ("height", "width")
        ):
            raise ValueError(
                f"{path}: 'image' must be an object with 'height' and 'width', two positive "
                "integers"
            )
    for i, ann in enumerate(record["annotations"]):
        seg = ann.get("segmentation") if isinstance(ann, dict) else None
        if not (
            isinstance(seg, dict)
            and isinstance(seg.get("counts"), str)
            and isinstance(seg.get("size"), list)
            and len(seg["size"]) == 2
            and None not in [as_dimension(v) for v in seg["size"]]
        ):
            raise ValueError(
                f"{path}: annotations[{i}] must hold 'segmentation': "
                "{'size': [h, w], 'counts': str} (COCO compressed RLE, h and w positive integers)"
            )
    return record


def decode_masks(record: dict[str, Any]) -> np.ndarray:
    """All masks of a record as a bool array of shape (N, H, W) (N may be 0).

    The height and width come from ``record["image"]`` when present, else from the first mask.
    """
    anns = record["annotations"]
    if "image" in record:
        h, w = int(record["image"]["height"]), int(record["image"]["width"])
    elif anns:
        h, w = (int(v) for v in anns[0]["segmentation"]["size"])
    else:
        return np.zeros((0, 0, 0), dtype=bool)
    if not anns:
        return np.zeros((0, h, w), dtype=bool)
    for i, ann in enumerate(anns):
        if [int(v) for v in ann["segmentation"]["size"]] != [h, w]:
            raise ValueError(
                f"annotations[{i}] has size {ann['segmentation']['size']}, expected [{h}, {w}]"
            )
    return np.stack([decode_segmentation(a["segmentation"]) for a in anns])


def _upsample_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if mask.shape == size:
        return mask.astype(bool, copy=False)
    # PyTorch's plain nearest (source index floor(i * in / out)), as everywhere in this project.
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))[None, None]
    return F.interpolate(m, size=size, mode="nearest")[0, 0].numpy().astype(bool)


def record_from_masks(
    masks: list[dict[str, Any]],
    height: int,
    width: int,
    image_id: int,
    file_name: str,
    min_area: int = 0,
) -> dict[str, Any]:
    """SA-1B record of one image from mask dicts (e.g. ``SamAutomaticMaskGenerator`` output).

    Masks smaller than (height, width) (generated on a downscaled image) are upsampled with
    PyTorch's plain ``nearest`` (source index floor(i * in / out)). SAM's ``point_coords`` and
    ``crop_box`` are rescaled to the stored size; ``area`` and ``bbox`` are recomputed from the
    stored mask (COCO's box: width = x1 - x0 + 1, one more than SAM's generator reports).
    Masks with fewer than ``min_area`` pixels, and empty masks, are dropped; ids are 0..n-1.

    Args:
        masks: dicts with a bool "segmentation" array (h, w) and optional SA-1B extras.
        height, width: the stored size (the image's own size).
        image_id, file_name: the ``image`` entry.
        min_area: minimum mask area in pixels at the stored size.
    """
    annotations = []
    for m in masks:
        seg = np.asarray(m["segmentation"])
        sy, sx = height / seg.shape[0], width / seg.shape[1]
        full = _upsample_mask(seg, (height, width))
        if full.sum() < max(1, min_area):
            continue
        extra = {k: v for k, v in m.items() if k not in ("segmentation", "area", "bbox")}
        if "point_coords" in extra:
            extra["point_coords"] = [[x * sx, y * sy] for x, y in np.asarray(extra["point_coords"])]
        if "crop_box" in extra:
            x, y, w, h = np.asarray(extra["crop_box"], dtype=float)
            extra["crop_box"] = [x * sx, y * sy, w * sx, h * sy]
        annotations.append(make_annotation(full, len(annotations), **extra))
    return make_record(image_id, file_name, height, width, annotations)


def _to_builtin(value: Any) -> Any:
    """numpy / torch scalars and arrays -> JSON-serialisable Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_to_builtin(v) for v in value]
    return value
