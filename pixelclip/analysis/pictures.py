"""Pictures of the cluster analysis, drawn with PIL (matplotlib is not a dependency).

* :func:`write_embedding_map`: the 2-D map of prompt embeddings and class-name embeddings;
* :func:`region_tile` / :func:`write_region_grid`: for each cluster, image regions assigned to it.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["class_colours", "region_tile", "write_embedding_map", "write_region_grid"]

GREY = (150, 150, 150)
_LINE = 12  # pixels per text line of PIL's default font


def class_colours(num_classes: int) -> list[tuple[int, int, int]]:
    """``num_classes`` well separated colours (evenly spaced hues, two lightness levels)."""
    out = []
    for c in range(num_classes):
        hue = (c * 0.618034) % 1.0  # golden-ratio steps keep neighbours apart
        r, g, b = colorsys.hls_to_rgb(hue, 0.42 if c % 2 else 0.55, 0.85)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def write_embedding_map(
    path: str | Path,
    coords: np.ndarray,
    labels: list[str],
    kinds: list[str],
    colours: list[tuple[int, int, int]],
    title: str,
    size: int = 640,
) -> None:
    """PNG scatter plot: prompts as circles, class names as squares, each with its label.

    Args:
        coords: (N, 2) positions.
        labels: N texts drawn next to the markers.
        kinds: N entries, "prompt" or "name".
        colours: N RGB marker colours.
        title: text above the plot.
    """
    margin, head = 40, 2 * _LINE + 8
    canvas = Image.new("RGB", (size, size + head), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(title.split("\n")[:2]):
        draw.text((8, 4 + i * _LINE), line, fill=(0, 0, 0))
    coords = np.asarray(coords, dtype=np.float64)
    low, high = coords.min(0), coords.max(0)
    span = np.where(high - low > 0, high - low, 1.0)
    inner = size - 2 * margin
    pixels = (coords - low) / span * inner + margin
    pixels[:, 1] = size - pixels[:, 1] + head  # y grows upwards in the plot
    draw.rectangle([margin // 2, head + margin // 2, size - margin // 2, size + head - margin // 2],
                   outline=(200, 200, 200))  # fmt: skip
    order = sorted(range(len(labels)), key=lambda i: kinds[i] == "name")  # names on top
    for i in order:
        x, y = pixels[i]
        r = 5 if kinds[i] == "name" else 4
        box = [x - r, y - r, x + r, y + r]
        if kinds[i] == "name":
            draw.rectangle(box, fill=colours[i], outline=(0, 0, 0))
        else:
            draw.ellipse(box, fill=colours[i], outline=(60, 60, 60))
        fill = (0, 0, 0) if kinds[i] == "name" else (90, 90, 90)
        draw.text((x + r + 2, y - 6), labels[i], fill=fill)
    canvas.save(path)


def region_tile(image: np.ndarray, mask: np.ndarray, side: int, pad: float = 0.15) -> np.ndarray:
    """The bounding box of ``mask`` (grown by ``pad`` of its size, made square) cut from
    ``image``, pixels outside the mask dimmed, resized to ``side`` x ``side``.

    Args:
        image: uint8 (H, W, 3) RGB.
        mask: bool (H, W), not empty.

    Returns:
        uint8 (side, side, 3).
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("region_tile: the mask is empty")
    height, width = mask.shape
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    half = max(ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()) * (1 + 2 * pad) / 2
    half = max(half, 4.0)
    y0, y1 = int(max(0, math.floor(cy - half))), int(min(height, math.ceil(cy + half)))
    x0, x1 = int(max(0, math.floor(cx - half))), int(min(width, math.ceil(cx + half)))
    crop = image[y0:y1, x0:x1].astype(np.float32)
    inside = mask[y0:y1, x0:x1, None]
    dimmed = np.where(inside, crop, crop * 0.3 + 25)  # darkened: the region stands out
    tile = Image.fromarray(dimmed.round().astype(np.uint8))
    tile.thumbnail((side, side), Image.BILINEAR)
    out = Image.new("RGB", (side, side), (255, 255, 255))
    out.paste(tile, ((side - tile.width) // 2, (side - tile.height) // 2))
    return np.asarray(out)


def write_region_grid(
    path: str | Path,
    rows: list[tuple[str, str, tuple[int, int, int], list[np.ndarray]]],
    tiles_per_row: int,
    side: int,
    rows_per_column: int = 16,
) -> None:
    """PNG: one row per cluster (a caption of two lines, then its tiles); long lists of rows are
    laid out in several columns.

    Args:
        rows: (caption line 1, caption line 2, colour of the swatch, tiles) per cluster; each
            tile uint8 (side, side, 3).
        tiles_per_row: tiles of the widest row.
        side: tile side.
        rows_per_column: rows before a new column starts.
    """
    pad, caption_w = 4, 150
    block_w = caption_w + max(tiles_per_row, 1) * (side + pad) + 3 * pad
    columns = max(1, math.ceil(len(rows) / rows_per_column))
    per_column = math.ceil(len(rows) / columns) if rows else 1
    row_h = max(side, 2 * _LINE + 4) + pad
    canvas = Image.new("RGB", (columns * block_w + pad, per_column * row_h + pad), (255, 255, 255))
    corners = [(pad + (i // per_column) * block_w, pad + (i % per_column) * row_h)
               for i in range(len(rows))]  # fmt: skip
    for (x, y), (*_, tiles) in zip(corners, rows):
        for t, tile in enumerate(tiles[:tiles_per_row]):
            canvas.paste(Image.fromarray(tile), (x + caption_w + t * (side + pad), y))
    # A 256-colour palette makes the file about 4x smaller; the caption colours are added to the
    # palette afterwards so that the swatches keep their exact class colours.
    reserved = len({colour for *_, colour, _ in rows}) + 8  # + text colours and anti-aliasing
    if reserved <= 128:
        canvas = canvas.quantize(colors=256 - reserved)
    draw = ImageDraw.Draw(canvas)
    for (x, y), (line1, line2, colour, _) in zip(corners, rows):
        draw.rectangle([x, y + 2, x + 10, y + 12], fill=colour, outline=(0, 0, 0))
        draw.text((x + 14, y + 1), line1, fill=(0, 0, 0))
        draw.text((x + 14, y + 1 + _LINE), line2, fill=(80, 80, 80))
    canvas.save(path, optimize=True)
