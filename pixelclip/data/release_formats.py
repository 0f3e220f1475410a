"""Readers of the official release formats that ``datasets/prepare_*.py`` convert.

Each reader takes the release's own files and nothing else (no dataset-specific package such as
the PASCAL in Detail API, no pickle), checks what it reads and names the file in every error:

* the PASCAL in Detail annotation ``trainval_merged.json`` (the file MMSegmentation's and CAT-Seg's
  Pascal-Context converters read through the Detail API): plain JSON whose ``images`` carry
  ``image_id``, ``file_name``, ``height``, ``width`` and ``phase``, and whose
  ``annos_segmentation`` carry ``image_id``, ``category_id`` (the ids of the 459-class
  ``labels.txt``, 0 = unlabeled) and a COCO-style ``segmentation`` (compressed or uncompressed RLE,
  or polygons), decoded with pycocotools. The class map of an image is what the Detail API's
  ``getMask(img)`` builds (ccvl/detail-api, ``PythonAPI/detail/__init__.py``): zeros, then each
  annotation's pixels set to its category, in file order (a later annotation wins);
* the ``*_seg.png`` class maps of the full ADE20K release (ADE20K_2021_17_01): RGB images whose
  class index is ``R // 10 * 256 + G`` (the release's ``utils_ade20k.loadAde20K``, and
  MaskFormer's ``datasets/prepare_ade20k_full_sem_seg.py``, github.com/facebookresearch/MaskFormer),
  and the resizing that the ADE20K-847 benchmark applies (shorter side capped at 512 pixels).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..checkpoint.safe_io import check_local_file

logger = logging.getLogger(__name__)

__all__ = [
    "DetailImage",
    "DetailIndex",
    "ade_class_mask",
    "ade_resized_size",
    "detail_class_map",
    "read_detail_json",
    "resize_image",
    "resize_label",
]


# ------------------------------------------------------------------------ PASCAL in Detail JSON
@dataclass(frozen=True)
class DetailImage:
    """One image of a Detail annotation file and its segmentation annotations."""

    key: str  # the image's file stem, e.g. "2008_000002"
    height: int
    width: int
    annotations: tuple[tuple[int, Any], ...]  # (category_id, segmentation), in file order


@dataclass(frozen=True)
class DetailIndex:
    """The part of a Detail annotation file the label conversion needs."""

    path: Path
    images: dict[str, DetailImage]  # by key
    category_ids: frozenset[int]  # the ids its "categories" list declares


def _field(entry: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise ValueError(f"{where}: expected an object with a {key!r} entry")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{where}: {key!r} must be {kind}, got {type(value).__name__}")
    return value


def read_detail_json(path: str | Path, phases: Collection[str] | None = None) -> DetailIndex:
    """Index a PASCAL in Detail annotation file (``trainval_merged.json``).

    Args:
        path: the JSON file.
        phases: keep the images whose ``phase`` is one of these ("train", "val"); None: all.

    Returns:
        the kept images with their annotations, and the declared category ids.

    Raises:
        ValueError: not JSON, or an entry lacks a field or has the wrong type (the message names
            the file, the list and the entry's index). FileNotFoundError: no such file.
    """
    text = check_local_file(path, "Detail annotation file")
    try:
        with open(text, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{text}: not a valid JSON file ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{text}: expected a JSON object, got {type(data).__name__}")
    for key in ("images", "annos_segmentation"):
        if not isinstance(data.get(key), list):
            raise ValueError(
                f"{text}: expected a list {key!r} (is it the PASCAL in Detail "
                "trainval_merged.json?)"
            )
    sizes: dict[int, tuple[str, int, int]] = {}
    for n, entry in enumerate(data["images"]):
        where = f"{text}: images[{n}]"
        phase = _field(entry, "phase", str, where)
        if phases is not None and phase not in phases:
            continue
        image_id = _field(entry, "image_id", int, where)
        key = Path(_field(entry, "file_name", str, where)).stem
        sizes[image_id] = (
            key,
            _field(entry, "height", int, where),
            _field(entry, "width", int, where),
        )
    annotations: dict[int, list[tuple[int, Any]]] = {i: [] for i in sizes}
    for n, entry in enumerate(data["annos_segmentation"]):
        where = f"{text}: annos_segmentation[{n}]"
        image_id = _field(entry, "image_id", int, where)
        if image_id in annotations:
            category = _field(entry, "category_id", int, where)
            annotations[image_id].append(
                (category, _field(entry, "segmentation", (dict, list), where))
            )
    categories = frozenset(
        _field(c, "category_id", int, f"{text}: categories[{n}]")
        for n, c in enumerate(data.get("categories") or [])
    )
    images = {
        key: DetailImage(key, h, w, tuple(annotations[i])) for i, (key, h, w) in sizes.items()
    }
    logger.info("%s: %d images, %d categories", text, len(images), len(categories))
    return DetailIndex(Path(text), images, categories)


def _decode_segmentation(seg: Any, height: int, width: int, where: str) -> np.ndarray:
    """(H, W) bool mask of a COCO-style segmentation: RLE (compressed or not) or polygons."""
    from pycocotools import mask as mask_utils

    try:
        if isinstance(seg, list):  # polygons [[x0, y0, x1, y1, ...], ...]
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        else:
            size = seg.get("size")
            if not isinstance(size, list) or [int(v) for v in size] != [height, width]:
                raise ValueError(f"RLE size {size!r} differs from the image's [{height}, {width}]")
            counts = seg.get("counts")
            if isinstance(counts, list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(seg, height, width)
            elif isinstance(counts, str | bytes):
                rle = seg
            else:
                raise ValueError(f"RLE 'counts' must be a string or a list, got {counts!r:.40}")
        mask = mask_utils.decode(rle)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise ValueError(f"{where}: cannot decode the segmentation ({e})") from e
    if mask.shape[:2] != (height, width):
        raise ValueError(f"{where}: decoded mask is {mask.shape[:2]}, expected ({height}, {width})")
    return mask.reshape(height, width).astype(bool)


def detail_class_map(index: DetailIndex, image: DetailImage) -> np.ndarray:
    """The (H, W) int64 class map of one image: category ids, 0 where nothing is annotated.

    Annotations are painted in file order, so a later one wins where two overlap, as in the
    Detail API's ``getMask``.
    """
    label = np.zeros((image.height, image.width), dtype=np.int64)
    for n, (category, seg) in enumerate(image.annotations):
        where = f"{index.path}: image {image.key}, annotation {n} (category {category})"
        label[_decode_segmentation(seg, image.height, image.width, where)] = category
    return label


# ------------------------------------------------------------------------------- ADE20K full
ADE_SEG_SUFFIX = "_seg.png"


def ade_class_mask(path: str | Path) -> np.ndarray:
    """The (H, W) int32 class indices of an ADE20K full-release ``*_seg.png`` (RGB).

    The release encodes the class of a pixel as ``R // 10 * 256 + G`` (B holds instances).
    """
    with Image.open(path) as img:
        if img.mode != "RGB":
            raise ValueError(
                f"{path}: expected the release's RGB class map (mode RGB), got mode {img.mode!r}"
            )
        seg = np.asarray(img)
    return (seg[..., 0].astype(np.int32) // 10) * 256 + seg[..., 1].astype(np.int32)


def ade_resized_size(height: int, width: int, max_short_side: int) -> tuple[int, int] | None:
    """(height, width) after capping the shorter side at ``max_short_side``; None: kept as is.

    The rule of MaskFormer's ADE20K-full converter (the ADE-847 benchmark of MaskFormer, CAT-Seg
    and the open-vocabulary literature): an image whose shorter side exceeds 512 is scaled so
    that it is 512, the longer side rounded (Python's ``round``). ``max_short_side <= 0``: never.
    """
    if max_short_side <= 0 or min(height, width) <= max_short_side:
        return None
    if width >= height:
        return max_short_side, round(width / float(height) * max_short_side)
    return round(height / float(width) * max_short_side), max_short_side


def resize_label(label: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) integer map to ``size`` = (height, width)
    (OpenCV ``INTER_NEAREST``, as the ADE-847 converter does)."""
    if label.dtype not in (np.int32, np.uint8, np.uint16):  # dtypes cv2.resize handles exactly
        label = label.astype(np.int32)
    return cv2.resize(label, (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST)


def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of an (H, W[, C]) uint8 image to ``size`` = (height, width) (OpenCV
    ``INTER_LINEAR``, as the ADE-847 converter does)."""
    return cv2.resize(image, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
