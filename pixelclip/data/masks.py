"""COCO-RLE masks sampled on a grid without decoding them at full resolution.

SA-1B stores ~100 masks per image as COCO compressed run-length encodings (RLE) at the image's
full resolution, while training only needs each mask on a small grid (MASK_RESOLUTION, 256x256)
of the augmented crop. Decoding every mask to H x W and pushing it through resize / crop / flip
writes and reads hundreds of megabytes per image. Here instead:

1. :func:`rle_counts` parses the compressed ``counts`` strings of all masks of an image at once
   with vectorised numpy (the format of ``rleFrString`` in pycocotools' ``maskApi.c``: 5 data
   bits per character offset by 48, a continuation bit 0x20, a sign bit 0x10 in the last
   character, and counts after the third one stored as deltas to the count two places earlier).
2. :func:`grid_source_indices` maps every grid row / column back through the detectron2
   transforms (resize, crop, flip) to a row / column of the original mask, reproducing the
   interpolation rules exactly (see below).
3. :func:`sample_rle_masks` reads the masks only at those grid points: RLE runs are column-major,
   so the sorted flat indices of the grid points are located among the run boundaries with one
   ``searchsorted`` and a parity prefix sum. Cost: O(runs + N * grid points), no H x W array.

Relation to the model's rule (docs/METHOD.md §4.2). The reference pipeline transforms each full
mask with detectron2 (``ResizeTransform.apply_segmentation`` = PIL ``NEAREST`` resize of a uint8
mask, then the crop, then the flip) and the model resizes the crop-resolution mask to S x S with
PyTorch ``nearest`` (source index ``floor(float32(i) * float32(in / out))``). PIL's nearest
resize samples pixel centres, ``floor((x + 0.5) * in / out)``, computed by accumulating the step
in double precision (``ImagingScaleAffine``); :func:`pil_nearest_indices` replays the same
accumulation and :func:`torch_nearest_indices` the same float32 arithmetic, so the composed
index maps select exactly the pixels that pipeline selects. The grid masks are therefore *equal*
(not just close) to "detectron2 transforms of the full mask, then PyTorch nearest to S x S";
``tests/test_masks_decode.py`` checks this equality on generated masks. (It is equality with
detectron2's path for uint8 masks, the type ``apply_segmentation`` is meant for; bool or float
masks would be resized by detectron2 with PyTorch ``nearest``, without the half-pixel offset, and
could then differ by one source pixel at run boundaries.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from detectron2.data import transforms as T

__all__ = [
    "RLEFormatError",
    "as_dimension",
    "max_rle_chars",
    "rle_counts",
    "rle_sizes",
    "sample_rle_masks",
    "torch_nearest_indices",
    "pil_nearest_indices",
    "grid_source_indices",
]

# Transforms that change pixel values but not geometry; masks ignore them.
PHOTOMETRIC_TRANSFORMS: tuple[type, ...] = (
    T.NoOpTransform,
    T.ColorTransform,
    T.PILColorTransform,
    T.BlendTransform,
)


class RLEFormatError(ValueError):
    """A segmentation is not a valid COCO RLE (or disagrees with its image)."""


# Larger sides are refused: h * w must stay far inside int64 for the run-sum checks below.
MAX_SIDE = 2**31 - 1


def as_dimension(value: Any) -> int | None:
    """``value`` as an image side (an int in [1, MAX_SIDE]), or None when it is not one.

    JSON numbers arrive as int or float: integral floats (``64.0``) are accepted, while strings,
    booleans, NaN, infinities, fractions, zero and negative numbers are not (``int()`` would turn
    ``"64"`` or ``True`` or ``3.7`` into a plausible size and ``nan`` into an exception).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            return None
        value = int(value)
    if isinstance(value, (int, np.integer)) and 1 <= value <= MAX_SIDE:
        return int(value)
    return None


def max_rle_chars(height: int, width: int) -> int:
    """The longest compressed RLE ``counts`` string an ``height`` x ``width`` mask can need.

    A mask has at most h * w + 1 runs (runs alternate between 0 and 1, every run but the first
    holds at least one pixel), and every stored value -- a run length, or from the fourth run on
    its difference to the run two places earlier -- lies in [-h * w, h * w]. The encoder writes
    a value in the fewest 5-bit characters whose signed range holds it, so k characters with
    2 ** (5k - 1) > h * w suffice for every value. A longer string is not an RLE of this mask and
    is refused before parsing (the parser's arrays grow with the string, not with the mask).
    """
    pixels = int(height) * int(width)
    chars_per_value = -(-(pixels.bit_length() + 1) // 5)  # ceil((bits + sign) / 5)
    return (pixels + 1) * chars_per_value


def rle_sizes(segmentations: Sequence[Mapping[str, Any]], source: str = "") -> np.ndarray:
    """The ``size`` field ([h, w]) of every segmentation.

    Args:
        segmentations: COCO RLE dicts with keys ``size`` and ``counts``.
        source: file name used in error messages.

    Returns:
        int64 array of shape (N, 2).

    Raises:
        RLEFormatError: a segmentation is not a dict with a ``size`` of two positive integers
            (see :func:`as_dimension`).
    """
    sizes = np.zeros((len(segmentations), 2), dtype=np.int64)
    for i, seg in enumerate(segmentations):
        size = seg.get("size") if isinstance(seg, Mapping) else None
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and "counts" in seg):
            raise RLEFormatError(
                f"{source}: annotation {i}: expected a COCO RLE {{'size': [h, w], 'counts': ...}}"
            )
        h, w = as_dimension(size[0]), as_dimension(size[1])
        if h is None or w is None:
            raise RLEFormatError(
                f"{source}: annotation {i}: size {size!r} is not [h, w] with two integers in "
                f"1..{MAX_SIDE}"
            )
        sizes[i] = h, w
    return sizes


def rle_counts(
    segmentations: Sequence[Mapping[str, Any]], source: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths of all masks, concatenated.

    Compressed counts (``str`` / ``bytes``, as in SA-1B) are parsed together in one vectorised
    pass; uncompressed counts (a list of ints, COCO "iscrowd" style) are taken as they are.
    Runs alternate 0, 1, 0, ... in column-major (Fortran) pixel order, starting with zeros.

    Args:
        segmentations: N COCO RLE dicts ``{"size": [h, w], "counts": str | bytes | list[int]}``.
        source: file name used in error messages.

    Returns:
        ``(counts, offsets)``: int64 arrays; the runs of mask n are
        ``counts[offsets[n]:offsets[n + 1]]``; offsets has shape (N + 1,).

    Raises:
        RLEFormatError: counts neither a string nor a list of integers, longer than the mask can
            need (:func:`max_rle_chars`; h * w + 1 entries for a list), malformed, negative runs,
            or runs not summing to h * w; the message names ``source`` and the annotation index.
    """
    sizes = rle_sizes(segmentations, source)
    n = len(segmentations)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(1, np.int64)
    parts: list[np.ndarray] = [np.zeros(0, np.int64)] * n
    compressed = [i for i, s in enumerate(segmentations) if isinstance(s["counts"], (str, bytes))]
    for i in compressed:
        counts = segmentations[i]["counts"]
        limit = max_rle_chars(*sizes[i])
        # Checked before anything is allocated for the string.
        if len(counts) > limit:
            raise RLEFormatError(
                f"{source}: annotation {i}: counts string has {len(counts)} characters, but a "
                f"compressed RLE of a {sizes[i, 0]}x{sizes[i, 1]} mask needs at most {limit}"
            )
        if isinstance(counts, str) and not counts.isascii():
            raise RLEFormatError(
                f"{source}: annotation {i}: malformed compressed RLE counts string (non-ASCII "
                "characters)"
            )
    for i in sorted(set(range(n)) - set(compressed)):
        parts[i] = _uncompressed_counts(segmentations[i]["counts"], sizes[i], i, source)
    if compressed:
        strings = [segmentations[i]["counts"] for i in compressed]
        strings = [s.encode("ascii") if isinstance(s, str) else s for s in strings]
        counts, offsets = _parse_compressed(strings, compressed, source)
        if len(compressed) < n:  # mixed with uncompressed lists: reassemble in order
            for i, a, b in zip(compressed, offsets[:-1], offsets[1:]):
                parts[i] = counts[a:b]
    if len(compressed) < n:
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        counts = np.concatenate(parts)
    lengths = np.diff(offsets)
    # Every mask needs at least one run for reduceat below (a 0x0 mask is not an image).
    if (lengths == 0).any():
        bad = int(np.flatnonzero(lengths == 0)[0])
        raise RLEFormatError(f"{source}: annotation {bad}: empty counts")
    if (counts < 0).any():
        bad = int(np.searchsorted(offsets, np.flatnonzero(counts < 0)[0], side="right") - 1)
        raise RLEFormatError(f"{source}: annotation {bad}: negative run length in counts")
    totals = np.add.reduceat(counts, offsets[:-1])
    wrong = np.flatnonzero(totals != sizes[:, 0] * sizes[:, 1])
    if wrong.size:
        i = int(wrong[0])
        raise RLEFormatError(
            f"{source}: annotation {i}: runs cover {int(totals[i])} pixels, but its size "
            f"{sizes[i].tolist()} has {int(sizes[i, 0] * sizes[i, 1])}"
        )
    return counts, offsets


def _uncompressed_counts(counts: Any, size: np.ndarray, index: int, source: str) -> np.ndarray:
    """The run lengths of an uncompressed RLE (a list of integers), checked for type and length."""
    what = f"{source}: annotation {index}"
    if not isinstance(counts, (list, tuple)):
        raise RLEFormatError(
            f"{what}: counts is a {type(counts).__name__}; expected a string (compressed RLE) or "
            "a list of integer run lengths"
        )
    limit = int(size[0]) * int(size[1]) + 1
    if len(counts) > limit:
        raise RLEFormatError(
            f"{what}: counts has {len(counts)} runs, but a {size[0]}x{size[1]} mask has at most "
            f"{limit}"
        )
    try:
        # No dtype: the inferred one tells integers from floats, booleans, NaN and nested lists.
        values = np.asarray(counts)
    except (TypeError, ValueError, OverflowError) as e:
        raise RLEFormatError(f"{what}: counts are not a flat list of integers ({e})") from e
    if values.size and (values.ndim != 1 or values.dtype.kind not in "iu"):
        raise RLEFormatError(f"{what}: counts are not a flat list of integers")
    return values.astype(np.int64, copy=False).reshape(-1)


def _parse_compressed(
    strings: list[bytes], indices: list[int], source: str
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised ``rleFrString`` over several strings; returns (counts, per-string offsets)."""
    lengths = np.array([len(s) for s in strings], dtype=np.int64)
    if (lengths == 0).any():
        i = indices[int(np.flatnonzero(lengths == 0)[0])]
        raise RLEFormatError(f"{source}: annotation {i}: empty counts string")
    chars = np.frombuffer(b"".join(strings), dtype=np.uint8).astype(np.int64) - 48
    char_end = np.cumsum(lengths)  # exclusive end of each string
    more = (chars & 0x20) != 0
    bad_char = (chars < 0) | (chars > 63)
    # A string must end on a complete number.
    bad_end = np.zeros_like(bad_char)
    bad_end[char_end - 1] = more[char_end - 1]
    if (bad_char | bad_end).any():
        i = indices[int(np.searchsorted(char_end, np.flatnonzero(bad_char | bad_end)[0], "right"))]
        raise RLEFormatError(f"{source}: annotation {i}: malformed compressed RLE counts string")
    tok_end = np.flatnonzero(~more)
    tok_start = np.concatenate([[0], tok_end[:-1] + 1])
    tok_len = tok_end - tok_start + 1
    if tok_len.max() > 7:  # 7 x 5 bits already exceed the uint32 counts of maskApi.c
        i = indices[int(np.searchsorted(char_end, tok_end[np.argmax(tok_len)], "right"))]
        raise RLEFormatError(f"{source}: annotation {i}: run length too long in counts string")
    shift = 5 * (np.arange(chars.size) - np.repeat(tok_start, tok_len))
    values = np.add.reduceat((chars & 0x1F) << shift, tok_start)
    negative = (chars[tok_end] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * tok_len[negative])
    # Tokens per string, and each token's index m within its string.
    tok_offsets = np.concatenate([[0], np.searchsorted(tok_end, char_end - 1, side="right")])
    per_string = np.diff(tok_offsets)
    string_of_tok = np.repeat(np.arange(len(strings)), per_string)
    m = np.arange(values.size) - tok_offsets[string_of_tok]
    # counts[m] = x[m] + counts[m - 2] for m > 2: a running sum along two chains per string
    # (odd m starting at 1, even m starting at 2); m = 0 stands alone.
    chain = string_of_tok * 3 + np.where(m == 0, 2, m % 2)
    order = np.argsort(chain, kind="stable")
    sorted_values = values[order]
    sums = np.cumsum(sorted_values)
    sorted_chain = chain[order]
    first = np.concatenate([[True], sorted_chain[1:] != sorted_chain[:-1]])
    first_idx = np.flatnonzero(first)
    before = np.repeat(sums[first_idx] - sorted_values[first_idx], np.diff([*first_idx, sums.size]))
    counts = np.empty_like(values)
    counts[order] = sums - before
    return counts, tok_offsets


def sample_rle_masks(
    segmentations: Sequence[Mapping[str, Any]],
    rows: np.ndarray,
    cols: np.ndarray,
    source: str = "",
) -> np.ndarray:
    """Read COCO-RLE masks at the points of a separable grid.

    Args:
        segmentations: N COCO RLE dicts of one image (all of the same ``size`` [h, w]).
        rows: int array (R,), row index in [0, h) of every grid row, or -1 for "outside" (False).
        cols: int array (C,), column index in [0, w) of every grid column, or -1.
        source: file name used in error messages.

    Returns:
        bool array of shape (N, R, C): ``out[n, i, j] = mask_n[rows[i], cols[j]]``.

    Raises:
        RLEFormatError: masks of different sizes, an index out of range, or bad counts.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    n = len(segmentations)
    if n == 0:
        return np.zeros((0, rows.size, cols.size), dtype=bool)
    sizes = rle_sizes(segmentations, source)
    if (sizes != sizes[0]).any():
        i = int(np.flatnonzero((sizes != sizes[0]).any(axis=1))[0])
        raise RLEFormatError(
            f"{source}: annotation {i} has size {sizes[i].tolist()}, annotation 0 has "
            f"{sizes[0].tolist()}; all masks of an image must share its size"
        )
    h, w = (int(v) for v in sizes[0])
    if rows.size and (rows.max() >= h or rows.min() < -1):
        raise RLEFormatError(f"{source}: grid rows outside the {h}x{w} masks")
    if cols.size and (cols.max() >= w or cols.min() < -1):
        raise RLEFormatError(f"{source}: grid columns outside the {h}x{w} masks")
    counts, offsets = rle_counts(segmentations, source)

    # Grid points in column-major order, as the runs are: distinct columns ascending, then
    # distinct rows ascending within each (strictly increasing flat indices).
    uniq_rows, row_inverse = np.unique(rows.clip(0), return_inverse=True)
    uniq_cols, col_inverse = np.unique(cols.clip(0), return_inverse=True)
    points = (uniq_cols[:, None] * h + uniq_rows[None, :]).ravel()
    num_points = points.size
    # Run boundaries of every mask (flat pixel indices where the value toggles). Boundary b
    # first affects the point number searchsorted(points, b); the value at a point is the parity
    # of the toggles at or before it. Toggles at the same point cancel in pairs, and the values
    # are written as alternating segments with one np.repeat (no N x points prefix sum).
    run_mask = np.repeat(np.arange(n), np.diff(offsets))
    ends = np.cumsum(counts)
    bounds = ends - np.repeat(np.concatenate([[0], ends])[offsets[:-1]], np.diff(offsets))
    first_point = np.searchsorted(points, bounds, side="left")
    inside = first_point < num_points
    toggle = run_mask[inside] * num_points + first_point[inside]  # sorted, global positions
    new_pos = np.diff(toggle, prepend=-1) != 0
    multiplicity = np.diff(np.append(np.flatnonzero(new_pos), toggle.size))
    toggle = toggle[new_pos][multiplicity % 2 == 1]
    # Segment starts: every mask starts at value 0, then its k-th toggle starts value k % 2.
    mask_starts = np.arange(n) * num_points
    toggle_mask = toggle // num_points
    rank = np.arange(toggle.size) - np.searchsorted(toggle_mask, toggle_mask, side="left") + 1
    starts = np.concatenate([mask_starts, toggle])
    seg_values = np.concatenate([np.zeros(n, dtype=bool), rank % 2 == 1])
    order = np.argsort(starts, kind="stable")  # a mask start precedes a toggle at its position
    starts, seg_values = starts[order], seg_values[order]
    values = np.repeat(seg_values, np.diff(np.append(starts, n * num_points)))
    values = values.reshape(n, uniq_cols.size, uniq_rows.size)

    # Back to the requested order (cheap slicing for ascending or descending indices, e.g. a flip).
    values = values[:, _selector(col_inverse), :][:, :, _selector(row_inverse)]
    out = np.ascontiguousarray(values.transpose(0, 2, 1))
    if (rows < 0).any():
        out[:, rows < 0, :] = False
    if (cols < 0).any():
        out[:, :, cols < 0] = False
    return out


def _selector(index: np.ndarray) -> slice | np.ndarray:
    """``index`` as a slice when it is 0..n-1 or n-1..0 (a view instead of a copy)."""
    n = index.size
    if np.array_equal(index, np.arange(n)):
        return slice(None)
    if np.array_equal(index, np.arange(n - 1, -1, -1)):
        return slice(None, None, -1)
    return index


def torch_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of PyTorch's ``F.interpolate(mode="nearest")`` along one axis.

    PyTorch computes ``min(floor(float32(i) * scale), in - 1)`` with the float32 scale
    ``in / out`` (and shortcuts for equal sizes and exact 2x upsampling, which this formula
    reproduces).

    Returns:
        int64 array of shape (out_size,).
    """
    scale = np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def pil_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of PIL's ``Image.resize(..., NEAREST)`` along one axis.

    PIL samples pixel centres: ``floor((x + 0.5) * in / out)``, accumulating the step in double
    precision; the accumulation (not the direct product) is replayed so that rounding at exact
    integers matches PIL bit for bit.

    Returns:
        int64 array of shape (out_size,).
    """
    scale = in_size / out_size
    steps = np.full(out_size, scale)
    steps[0] = 0.5 * scale
    idx = np.floor(np.add.accumulate(steps)).astype(np.int64)
    return np.clip(idx, 0, in_size - 1)


def grid_source_indices(
    transforms: T.TransformList | Sequence[T.Transform],
    image_size: tuple[int, int],
    frame_size: tuple[int, int],
    grid_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Where each point of an S x S grid over the augmented image comes from in the original.

    The augmented image (the result of ``transforms`` on an image of ``image_size``) is placed at
    the top-left of a frame of ``frame_size`` (padding on the bottom / right); the grid samples the
    frame with PyTorch's nearest rule. Grid points in the padding get -1.

    Args:
        transforms: detectron2 transforms applied to the image, in order. Supported geometry:
            ResizeTransform (masks follow with PIL NEAREST, as ``apply_segmentation`` does),
            CropTransform, HFlipTransform, VFlipTransform; photometric transforms are skipped.
        image_size: (h, w) of the original image (and masks).
        frame_size: (H, W) of the padded frame, at least the augmented image's size.
        grid_size: S.

    Returns:
        ``(rows, cols)``: int64 arrays of shape (S,), indices into the original image or -1.

    Raises:
        NotImplementedError: a transform whose effect on masks is not a separable index map.
    """
    tfms = list(transforms.transforms if isinstance(transforms, T.TransformList) else transforms)
    h, w = image_size
    shapes = []  # (h, w) before each transform
    for t in tfms:
        shapes.append((h, w))
        if isinstance(t, T.ResizeTransform):
            h, w = t.new_h, t.new_w
        elif isinstance(t, T.CropTransform):
            h, w = t.h, t.w
        elif not isinstance(t, (T.HFlipTransform, T.VFlipTransform, *PHOTOMETRIC_TRANSFORMS)):
            if not getattr(t, "is_photometric", False):
                raise NotImplementedError(
                    f"masks cannot follow {type(t).__name__}; supported: resize, crop, flips, "
                    "photometric transforms"
                )
    if h > frame_size[0] or w > frame_size[1]:
        raise ValueError(f"augmented image {h}x{w} does not fit the frame {frame_size}")
    rows = torch_nearest_indices(frame_size[0], grid_size)
    cols = torch_nearest_indices(frame_size[1], grid_size)
    rows = np.where(rows < h, rows, -1)
    cols = np.where(cols < w, cols, -1)
    for t, (h_in, w_in) in zip(reversed(tfms), reversed(shapes)):
        if isinstance(t, T.ResizeTransform):
            rows = _take(pil_nearest_indices(h_in, t.new_h), rows)
            cols = _take(pil_nearest_indices(w_in, t.new_w), cols)
        elif isinstance(t, T.CropTransform):
            rows = np.where(rows >= 0, rows + t.y0, -1)
            cols = np.where(cols >= 0, cols + t.x0, -1)
        elif isinstance(t, T.HFlipTransform):
            cols = np.where(cols >= 0, w_in - 1 - cols, -1)
        elif isinstance(t, T.VFlipTransform):
            rows = np.where(rows >= 0, h_in - 1 - rows, -1)
    return rows, cols


def _take(table: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.where(idx >= 0, table[idx.clip(0)], -1)
