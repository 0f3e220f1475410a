"""ToyWorld: a seeded synthetic world for testing PixelCLIP end to end on a CPU.

Every image shows 1-3 "stuff" regions (warped Voronoi cells, each a textured background) and 1-4
"things" (distinct shapes and colours, varied size and position, painted in order so later ones
occlude earlier ones). For every image the generator produces:

* a caption naming the classes present, without location words, in shuffled order
  ("a photo of grass, water, a ball and a star.") -- only for pretraining the small CLIP;
* class-agnostic, over-segmented masks in SA-1B format: things split into their natural parts
  (tree: canopy / trunk, sun: disc / rays, car: body / wheels / window) and stuff regions and parts
  further cut by a random Voronoi partition of the image; the whole thing or region is added as
  well half of the time (SA-1B masks are multi-granular and overlap). No class ids -- only for
  training PixelCLIP;
* a semantic label map (uint8 class index, 255 = ignore; no pixel is ignored in practice), saved
  for the dev and test splits only.

Image ``i`` of a split depends only on ``(seed, split, i)`` (one numpy generator per image), so a
world is reproducible whatever the chunk size, and a larger world extends a smaller one. Rendering
is vectorised over a chunk of images.

On-disk layout written by :func:`write_toyworld`::

    root/meta.json                       generator settings and counts (written last)
    root/class_names.json                list of the C class names (index = label value)
    root/train/<id>.png, <id>.json       image + SA-1B-format masks; root/train/captions.json
    root/{dev,test}/images/<id>.png      image
    root/{dev,test}/labels/<id>.png      uint8 label map (0..C-1, 255 = ignore)
    root/{dev,test}/captions.json        {id: caption}

Reading a written world back (detectron2 dataset dicts and registration) is
:mod:`pixelclip.toyworld.datasets`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..data.sa1b_format import make_annotation, make_record

logger = logging.getLogger(__name__)

__all__ = [
    "TOYWORLD_CLASSES",
    "TOYWORLD_STUFF",
    "TOYWORLD_THINGS",
    "ToyWorldBatch",
    "caption_min_pixels",
    "generate_toyworld",
    "write_toyworld",
]

TOYWORLD_STUFF = ("sky", "grass", "water", "sand", "road", "snow")
TOYWORLD_THINGS = ("ball", "box", "tree", "sun", "star", "ring", "cross", "car")
TOYWORLD_CLASSES = TOYWORLD_STUFF + TOYWORLD_THINGS
SPLITS = ("train", "dev", "test")
FORMAT_VERSION = 1
IGNORE_LABEL = 255
_PREFIXES = ("a photo of", "a picture of", "an image of", "a drawing of")
_MAX_STUFF, _MAX_THINGS, _MAX_CELLS = 3, 4, 5
_NS, _NT = len(TOYWORLD_STUFF), len(TOYWORLD_THINGS)
# Base colours (RGB in [0, 1]); things use a second colour for their second part.
# Colour table (class, part, RGB in [0, 1]); stuff uses part 0, unused parts are black.
_RGB = np.array(
    [[[0.50, 0.72, 0.95]] * 3, [[0.22, 0.58, 0.16]] * 3, [[0.12, 0.32, 0.78]] * 3,
     [[0.87, 0.77, 0.52]] * 3, [[0.36, 0.36, 0.39]] * 3, [[0.94, 0.95, 0.98]] * 3,
     [[0.85, 0.12, 0.12]] * 3, [[0.72, 0.52, 0.28], [0.45, 0.30, 0.14], [0, 0, 0]],
     [[0.08, 0.42, 0.12], [0.45, 0.28, 0.12], [0, 0, 0]],
     [[1.00, 0.85, 0.15], [1.00, 0.55, 0.05], [0, 0, 0]], [[0.85, 0.20, 0.70]] * 3,
     [[0.10, 0.72, 0.72]] * 3, [[0.08, 0.08, 0.10]] * 3,
     [[0.50, 0.20, 0.80], [0.05, 0.05, 0.05], [0.70, 0.90, 1.00]]], dtype=np.float32
)  # fmt: skip


@dataclass
class ToyWorldBatch:
    """A chunk of generated images.

    Attributes:
        images: (N, S, S, 3) uint8 RGB.
        labels: (N, S, S) uint8 class index into ``TOYWORLD_CLASSES``.
        masks: N bool arrays (M_i, S, S), class-agnostic (parts, regions, some wholes).
        captions: N strings.
    """

    images: np.ndarray
    labels: np.ndarray
    masks: list[np.ndarray]
    captions: list[str]


def _sample(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
    """All random choices of one image, drawn in a fixed order from its own generator."""
    s = float(size)
    n_stuff = rng.choice(3, p=[0.2, 0.5, 0.3]) + 1
    n_things = rng.choice(4, p=[0.2, 0.35, 0.3, 0.15]) + 1
    n_cells = rng.integers(2, _MAX_CELLS + 1)
    p = {
        "stuff_cls": rng.permutation(_NS)[:_MAX_STUFF],
        "stuff_on": np.arange(_MAX_STUFF) < n_stuff,
        "stuff_xy": rng.uniform(0, s, (_MAX_STUFF, 2)),
        "warp": np.concatenate([rng.uniform(0.02, 0.09, 2) * s, rng.uniform(0.05, 0.15, 2)]),
        "phase": rng.uniform(0, 2 * np.pi, 8),
        "tint": rng.uniform(-0.04, 0.04, (_NS, 3)),
        "thing_cls": rng.permutation(_NT)[:_MAX_THINGS],
        "thing_on": np.arange(_MAX_THINGS) < n_things,
        # (cx, cy, radius, rotation); centres may lie near the border, the shape is then cropped.
        "thing_geo": np.stack(
            [
                rng.uniform(0.1, 0.9, _MAX_THINGS) * s,
                rng.uniform(0.1, 0.9, _MAX_THINGS) * s,
                rng.uniform(0.14, 0.3, _MAX_THINGS) * s,
                rng.uniform(0, 2 * np.pi, _MAX_THINGS),
            ],
            axis=1,
        ),
        "thing_jit": rng.uniform(-0.08, 0.08, (_MAX_THINGS, 3)),
        "cell_xy": np.where(
            (np.arange(_MAX_CELLS) < n_cells)[:, None], rng.uniform(0, s, (_MAX_CELLS, 2)), 1e6
        ),
        "split": rng.random(_MAX_STUFF + _MAX_THINGS) < np.repeat([0.7, 0.5], [3, 4]),
        "whole": rng.random(_MAX_STUFF + _MAX_THINGS) < 0.5,
        "brightness": rng.uniform(0.9, 1.1, 1),
        "order": rng.random(len(TOYWORLD_CLASSES)),
        "prefix": rng.integers(len(_PREFIXES), size=1),
        "noise": rng.random((2, size, size), dtype=np.float32),
    }
    return p


def _stuff_texture(c: int, x, y, n0, n1, ph) -> tuple[np.ndarray, np.ndarray]:
    """Texture of stuff class ``c`` as (gain, offset) maps: pixel = colour * gain + offset.

    Args: x, y (1, S, S) pixel centres; n0, n1 (n, S, S) uniform noise; ph (n, 8) phases.
    Returns: two float32 arrays (n, S, S).
    """
    a = lambda i: ph[:, i, None, None]  # noqa: E731 -- per-image phase, broadcast over pixels
    zero = np.zeros_like(n0)
    if c == 0:  # sky: brighter towards the top, soft white clouds
        smooth = np.sin(0.11 * x + a(0)) + np.sin(0.09 * y + a(1)) + np.sin(0.07 * (x - y) + a(2))
        cloud = np.clip((smooth / 6 + 0.5 - 0.62) * 4, 0, 0.8)
        return (0.9 + 0.12 * (1 - y / x.shape[-1])) * (1 - cloud), cloud
    if c == 1:  # grass: vertical blade streaks
        return 0.65 + 0.25 * n0[:, :1, :] + 0.2 * n1, zero
    if c == 2:  # water: horizontal waves with highlights
        wave = np.sin(0.7 * y + 2.0 * np.sin(0.12 * x + a(3)))
        return 0.85 + 0.15 * wave, 0.3 * (wave > 0.92)
    if c == 3:  # sand: fine speckle and ripples
        return 0.86 + 0.16 * n0 + 0.05 * np.sin(0.45 * (x + y) + a(4)), zero
    if c == 4:  # road: asphalt speckle with a dashed lane line
        line = (np.abs(y - x.shape[-1] * (0.3 + 0.4 * a(5) / (2 * np.pi))) < 1.5) & (x % 10 < 5)
        return 0.82 + 0.25 * n0, 0.55 * line
    return 1 - 0.08 * n1, 0.1 * (n0 > 0.97)  # snow: soft shading and glints


def _thing_parts(c: int, u, v, rot) -> np.ndarray:
    """Part index (-1 = outside) of thing class ``c`` at local coords u, v (n, S, S) in radii."""
    cos, sin = np.cos(rot)[:, None, None], np.sin(rot)[:, None, None]
    ur, vr = cos * u + sin * v, -sin * u + cos * v  # rotated frame
    rho, theta = np.hypot(u, v), np.arctan2(vr, ur)
    out = np.full(u.shape, -1, dtype=np.int8)
    if c == 0:  # ball
        out[rho <= 0.9] = 0
    elif c == 1:  # box: a rotated square with a darker rim
        m = np.maximum(np.abs(ur), np.abs(vr))
        out[m <= 0.75] = 0
        out[(m > 0.62) & (m <= 0.75)] = 1
    elif c == 2:  # tree: triangular canopy on a trunk (upright)
        out[(v >= -1) & (v <= 0.5) & (np.abs(u) <= 0.5 * (v + 1))] = 0
        out[(v > 0.5) & (v <= 1) & (np.abs(u) <= 0.15)] = 1
    elif c == 3:  # sun: disc and 8 rays
        out[(rho > 0.65) & (rho <= 1) & (np.cos(8 * theta) > 0.3)] = 1
        out[rho <= 0.55] = 0
    elif c == 4:  # star: five points
        t = np.abs((theta % (2 * np.pi / 5)) - np.pi / 5) / (np.pi / 5)
        out[rho <= 0.38 + 0.62 * t**2] = 0
    elif c == 5:  # ring
        out[(rho >= 0.55) & (rho <= 0.95)] = 0
    elif c == 6:  # cross
        au, av = np.abs(ur), np.abs(vr)
        out[((au <= 0.27) & (av <= 0.95)) | ((av <= 0.27) & (au <= 0.95))] = 0
    else:  # car: body + cabin, black wheels, light window (upright)
        out[(np.abs(u) <= 1) & (v >= -0.1) & (v <= 0.35)] = 0  # body
        out[(np.abs(u) <= 0.5) & (v >= -0.5) & (v < -0.1)] = 0  # cabin
        out[(np.abs(u) <= 0.4) & (v >= -0.42) & (v <= -0.15)] = 2
        out[np.minimum(np.hypot(u - 0.55, v - 0.4), np.hypot(u + 0.55, v - 0.4)) <= 0.22] = 1
    return out


def _render(params: list[dict[str, np.ndarray]], size: int):
    """Render a chunk: images (N,S,S,3) float, labels, instance ids and part ids (N,S,S)."""
    p = {k: np.stack([q[k] for q in params]) for k in params[0]}
    p = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in p.items()}
    n = len(params)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)[:, None] + 0.5
    n0, n1 = p["noise"][:, 0], p["noise"][:, 1]
    # Stuff layout: nearest seed under a sinusoidal warp of the coordinates -> wavy boundaries.
    w, ph = p["warp"][:, :, None, None], p["phase"]
    wx = x + w[:, 0] * np.sin(w[:, 2] * y + ph[:, 6, None, None])
    wy = y + w[:, 1] * np.sin(w[:, 3] * x + ph[:, 7, None, None])
    sxy = np.where(p["stuff_on"][..., None], p["stuff_xy"], 1e4)[..., None, None]
    best = np.full((n, size, size), np.inf, dtype=np.float32)
    region = np.zeros((n, size, size), dtype=np.int16)
    for k in range(_MAX_STUFF):
        d = (wx - sxy[:, k, 0]) ** 2 + (wy - sxy[:, k, 1]) ** 2
        region[d < best] = k
        best = np.minimum(best, d)
    labels = np.take_along_axis(p["stuff_cls"], region.reshape(n, -1), 1).reshape(region.shape)
    labels, instance = labels.astype(np.uint8), region
    gain, offset = np.ones((2, n, size, size), dtype=np.float32)
    offset[:] = 0
    for c in np.unique(labels):
        idx = np.flatnonzero((labels == c).any(axis=(1, 2)))
        g, o = _stuff_texture(int(c), x, y, n0[idx], n1[idx], ph[idx])
        sel = labels[idx] == c
        gain[idx] = np.where(sel, g, gain[idx])
        offset[idx] = np.where(sel, o, offset[idx])
    part = np.zeros_like(instance)
    for slot in range(_MAX_THINGS):  # painter's order: later slots occlude earlier ones
        for c in range(_NT):
            idx = np.flatnonzero(p["thing_on"][:, slot] & (p["thing_cls"][:, slot] == c))
            if idx.size == 0:
                continue
            cx, cy, r, rot = (p["thing_geo"][idx, slot, i, None, None] for i in range(4))
            u, v = (x - cx) / r, (y - cy) / r
            parts = _thing_parts(c, u, v, rot[:, 0, 0])
            inside = parts >= 0
            labels[idx] = np.where(inside, _NS + c, labels[idx])
            instance[idx] = np.where(inside, _MAX_STUFF + slot, instance[idx])
            part[idx] = np.where(inside, parts, part[idx])
            # Shading with a highlight makes the ball look round; other things are flat.
            g = 1.15 - 0.35 * np.hypot(u + 0.35, v + 0.35) if c == 0 else 1.0
            gain[idx] = np.where(inside, g, gain[idx])
            offset[idx] = np.where(inside, 0.0, offset[idx])
    # Per-image colour jitter of every region and thing, looked up by instance id.
    jitter = np.concatenate(
        [np.take_along_axis(p["tint"], p["stuff_cls"][..., None], 1), p["thing_jit"]], axis=1
    )
    rgb = _RGB[labels, part] + np.take_along_axis(jitter, instance.reshape(n, -1, 1), 1).reshape(
        n, size, size, 3
    )
    image = (rgb * gain[..., None] + offset[..., None]) * p["brightness"][:, :, None, None]
    image += 0.03 * (n1[..., None] - 0.5)
    return np.clip(image, 0, 1), labels, instance, part, p


def _segments(instance, part, p, size: int, min_area: int) -> list[np.ndarray]:
    """Class-agnostic masks of every image: (instance, part, cell) pieces plus some wholes."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    cxy = p["cell_xy"][..., None, None]
    cell = np.argmin((x - cxy[:, :, 0]) ** 2 + (y - cxy[:, :, 1]) ** 2, axis=1)
    split = np.take_along_axis(p["split"], instance.reshape(len(instance), -1), 1)
    seg = instance.astype(np.int32) * 64 + part * 8 + np.where(split.reshape(cell.shape), cell, 0)
    out = []
    for b in range(len(seg)):
        ids = np.unique(seg[b])
        masks = [seg[b] == i for i in ids]
        for inst in np.unique(ids // 64):
            if p["whole"][b, inst] and np.sum(ids // 64 == inst) > 1:
                masks.append(instance[b] == inst)
        masks = [m for m in masks if m.sum() >= min_area]
        out.append(np.stack(masks) if masks else np.zeros((0, size, size), dtype=bool))
    return out


def _caption(labels: np.ndarray, order: np.ndarray, prefix: int, min_pixels: int) -> str:
    counts = np.bincount(labels.ravel(), minlength=len(TOYWORLD_CLASSES))
    present = [c for c in np.argsort(order) if counts[c] >= min_pixels]
    words = [TOYWORLD_CLASSES[c] if c < _NS else f"a {TOYWORLD_CLASSES[c]}" for c in present]
    listed = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return f"{_PREFIXES[prefix]} {listed}."


def caption_min_pixels(image_size: int) -> int:
    """A class is named in the caption when it covers at least this many pixels (0.5 %)."""
    return max(1, round(0.005 * image_size * image_size))


def generate_toyworld(
    num_images: int, *, image_size: int = 96, seed: int = 0, split: str = "train", start: int = 0
) -> ToyWorldBatch:
    """Generate images ``start .. start + num_images - 1`` of a split, in memory.

    Args:
        num_images: how many images.
        image_size: side S of the square images in pixels (>= 32).
        seed: world seed; splits use disjoint random streams.
        split: "train", "dev" or "test".
        start: index of the first image (image i depends only on seed, split and i).

    Returns:
        A :class:`ToyWorldBatch` (uint8 images (N, S, S, 3), uint8 labels (N, S, S), bool masks).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    if num_images <= 0:
        empty = np.zeros((0, image_size, image_size), dtype=np.uint8)
        return ToyWorldBatch(np.zeros((*empty.shape, 3), np.uint8), empty, [], [])
    code = SPLITS.index(split)
    params = [
        _sample(np.random.default_rng([seed, code, i]), image_size)
        for i in range(start, start + num_images)
    ]
    image, labels, instance, part, p = _render(params, image_size)
    min_area = max(4, image_size * image_size // 1000)
    masks = _segments(instance, part, p, image_size, min_area)
    min_px = caption_min_pixels(image_size)
    captions = [
        _caption(labels[b], p["order"][b], int(p["prefix"][b, 0]), min_px)
        for b in range(num_images)
    ]
    return ToyWorldBatch((image * 255 + 0.5).astype(np.uint8), labels, masks, captions)


def _write_png(path: Path, array: np.ndarray) -> None:
    data = array[..., ::-1] if array.ndim == 3 else array  # OpenCV writes BGR
    if not cv2.imwrite(str(path), np.ascontiguousarray(data)):
        raise OSError(f"could not write {path}")


def write_toyworld(
    root: str | os.PathLike,
    *,
    num_train: int,
    num_dev: int,
    num_test: int,
    image_size: int = 96,
    seed: int = 0,
    chunk_size: int = 256,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Generate a ToyWorld and write it under ``root`` (layout in the module docstring).

    If ``root/meta.json`` already describes the same world, nothing is regenerated (the call
    acts as a cache); a different existing world raises unless ``overwrite`` is set.

    Returns:
        The metadata written to ``root/meta.json``.
    """
    root = Path(root)
    meta = {"format_version": FORMAT_VERSION, "image_size": int(image_size), "seed": int(seed),
            "num_train": int(num_train), "num_dev": int(num_dev), "num_test": int(num_test),
            "class_names": list(TOYWORLD_CLASSES), "stuff_classes": list(TOYWORLD_STUFF),
            "thing_classes": list(TOYWORLD_THINGS), "ignore_label": IGNORE_LABEL}  # fmt: skip
    meta_path = root / "meta.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        if old == meta:
            logger.info("ToyWorld at %s is up to date", root)
            return meta
        if not overwrite:
            raise ValueError(
                f"{meta_path} describes a different ToyWorld ({old}); pass overwrite=True or "
                "choose another root"
            )
        meta_path.unlink()
    counts = {"train": num_train, "dev": num_dev, "test": num_test}
    for split, total in counts.items():
        labelled = split != "train"
        img_dir = root / split / ("images" if labelled else "")
        img_dir.mkdir(parents=True, exist_ok=True)
        if labelled:
            (root / split / "labels").mkdir(exist_ok=True)
        captions: dict[str, str] = {}
        for start in range(0, total, chunk_size):
            n = min(chunk_size, total - start)
            batch = generate_toyworld(n, image_size=image_size, seed=seed, split=split, start=start)
            for j in range(n):
                stem = f"{start + j:06d}"
                captions[stem] = batch.captions[j]
                _write_png(img_dir / f"{stem}.png", batch.images[j])
                if labelled:
                    _write_png(root / split / "labels" / f"{stem}.png", batch.labels[j])
                    continue
                anns = [make_annotation(m, k) for k, m in enumerate(batch.masks[j])]
                record = make_record(start + j, f"{stem}.png", image_size, image_size, anns)
                with open(img_dir / f"{stem}.json", "w", encoding="utf-8") as f:
                    json.dump(record, f, separators=(",", ":"))
        with open(root / split / "captions.json", "w", encoding="utf-8") as f:
            json.dump(captions, f, indent=0)
        logger.info("ToyWorld %s: wrote %d images to %s", split, total, root / split)
    (root / "class_names.json").write_text(json.dumps(list(TOYWORLD_CLASSES)), encoding="utf-8")
    meta_path.write_text(json.dumps(meta, indent=1), encoding="utf-8")  # last: completion marker
    return meta
