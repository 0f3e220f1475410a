"""Training mapper: one dataset dict -> weak view, strong view, masks (docs/METHOD.md §8).

Order of operations:

1. Read the image with detectron2's ``read_image`` (EXIF orientation applied; grayscale, palette
   and RGBA images converted to RGB -- alpha is dropped, not composited).
2. Weak view: detectron2 augmentations -- resize the shortest edge (INPUT.MIN_SIZE_TRAIN, at most
   INPUT.MAX_SIZE_TRAIN on the long edge), random crop (INPUT.CROP), SSD colour augmentation
   (INPUT.COLOR_AUG_SSD), flip (INPUT.RANDOM_FLIP).
3. Strong view: :class:`~pixelclip.data.augment.StrongAugmentation` applied on top of the weak
   view (same crop and flip, so the student and the teacher see the same geometry).
4. Padding: when the resized image is smaller than an absolute crop (only for extreme aspect
   ratios whose long edge hits MAX_SIZE_TRAIN), both views are padded on the bottom / right to the
   crop size with ``pad_value`` (CLIP's mean colour, 0 after normalisation, as detectron2's
   ``ImageList`` pads); the padding is False in ``valid`` and in every mask. Every sample of a
   batch therefore has the same size.
5. Masks: every SA-1B mask is read directly on the S x S grid of the padded crop, without decoding
   it at full resolution (:mod:`pixelclip.data.masks`); the result *equals* resizing each full
   mask with detectron2's transforms (PIL NEAREST), cropping, flipping, and resizing to S x S with
   PyTorch ``nearest`` (the model's rule, METHOD §4.2). Then the cutout box is removed, empty
   masks are dropped and the largest MAX_MASKS_PER_IMAGE masks (by area on the grid, stable
   order on ties) are kept.

Bad samples are logged with the file name and the mapper returns None; the training loader's
``SeededMapDataset`` (pixelclip/engine/resume.py) then draws a replacement that ``--resume``
reproduces (detectron2's ``MapDataset`` does the same with an RNG that restarts with the process).
``skip_bad_samples=False`` raises instead (for debugging). A sample is bad when its image or JSON is
missing, not a regular file (a FIFO or device is never opened), unreadable or corrupt; when the
image has more than ``max_image_pixels`` pixels (checked from the file header, before decoding:
:data:`MAX_IMAGE_PIXELS` by default); when the JSON has no annotations, sizes that are not two
positive integers or disagree with the image, counts that are neither a string nor a list of
integers, or an RLE longer than the mask can need (:func:`~pixelclip.data.masks.max_rle_chars`).
Messages show undecodable bytes of file names as ``\\xNN``
(:func:`~pixelclip.data.sa1b.printable_path`).

Giving up: detectron2's ``MapDataset`` (used when this mapper is given to detectron2's loader
directly) drops each bad sample from its replacement pool and, when none is left, fails with "Sample
larger than population"; ``SeededMapDataset`` would retry for ever. The mapper stops first, with one
:class:`TrainingDataError` that says how many samples were tried and lists the first files and
reasons, when ``give_up_after`` samples in a row had no usable mask (bad, or no mask left on the
grid of the crop), or as soon as every sample of the dataset has been bad since the last one
returned (counted as distinct samples, so it holds for both replacement schemes; the dataset size
is the number of dicts its loader returned, metadata ``num_images``, recorded by the SA-1B and
image-folder loaders). A dataset without one usable mask therefore never trains on a loss of 0.

Masks are defined on the EXIF-corrected image (SA-1B images carry no EXIF rotation; masks
written by our tools are made on ``read_image``'s output). A mask whose size disagrees with the
corrected image is rejected, never stretched.

Samples held in memory (the tar-shard source, :mod:`pixelclip.data.sa1b_shards`): a dict may carry
``image_bytes`` and ``annotation_bytes`` instead of files (``file_name`` / ``annotation_file`` then
only name the tar member in messages), or ``bad_sample``, a reason found while reading the shard
(logged and skipped like any bad sample). With ``downscale_to`` (DATASETS.SA1B.DOWNSCALE) the image
is decoded at the size the weak view's resize would give for the largest INPUT.MIN_SIZE_TRAIN
(JPEGs of at least twice that size are decoded at 1/2, 1/4 or 1/8 by libjpeg, then resized); the
masks stay at full resolution and are read through that resize too (a ``ResizeTransform`` before
the augmentations, PIL ``NEAREST`` as for every resize), so their sizes are still checked against
the original image.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image

from .augment import RandomColorAugSSD, StrongAugmentation
from .masks import (
    RLEFormatError,
    as_dimension,
    grid_source_indices,
    sample_rle_masks,
    torch_nearest_indices,
)
from .sa1b import (
    SA1BFormatError,
    load_sa1b_annotations,
    parse_sa1b_annotations,
    printable_path,
    regular_file_problem,
)

__all__ = [
    "MAX_IMAGE_PIXELS",
    "GIVE_UP_AFTER",
    "SA1BDatasetMapper",
    "BadSampleError",
    "TrainingDataError",
    "build_weak_augmentations",
]

logger = logging.getLogger(__name__)

MASK_SOURCES = ("sa1b", "dino")
# Default pixel limit of a training image, read from the file header before decoding: PIL's own
# default warning threshold (Image.MAX_IMAGE_PIXELS, ~89.5 megapixels, 256 MiB as RGB). SA-1B
# images have ~3.4 megapixels; a larger file is a mistake or a decompression bomb.
MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
# Samples in a row without a usable mask after which the mapper gives up (TrainingDataError).
GIVE_UP_AFTER = 100
# Files and reasons quoted in the give-up summary.
_REASONS_SHOWN = 5


class BadSampleError(ValueError):
    """A training sample that cannot be used (the message names the file)."""


class TrainingDataError(RuntimeError):
    """The training data yield no usable sample: the summary names the first files and reasons."""


def build_weak_augmentations(cfg: CfgNode) -> list[T.Augmentation]:
    """The weak view's augmentations from ``cfg.INPUT`` (resize, crop, SSD colour, flip)."""
    augs: list[T.Augmentation] = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(RandomColorAugSSD(cfg.INPUT.FORMAT))
    flip = cfg.INPUT.RANDOM_FLIP
    if flip not in ("none", "horizontal", "vertical"):
        raise ValueError(
            f"unknown INPUT.RANDOM_FLIP {flip!r}; choose from none, horizontal, vertical"
        )
    if flip != "none":
        augs.append(T.RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical"))
    return augs


class SA1BDatasetMapper:
    """Maps an SA-1B (or image-folder) dataset dict to the training inputs of PixelCLIP.

    See the module docstring for the pipeline. Output of ``__call__`` (None for a bad sample):

    - ``"image"``: uint8 Tensor[3, H, W], the weak view (channel order ``image_format``).
    - ``"image_strong"``: uint8 Tensor[3, H, W], the strong view (the weak view itself when the
      strong augmentation is disabled).
    - ``"masks"``: bool Tensor[N, S, S], S = ``mask_resolution``, in the crop's geometry, cutout and
      padding removed, non-empty, largest first, N <= ``max_masks`` (if > 0); (0, S, S) for
      ``mask_source="dino"``.
    - ``"valid"``: bool Tensor[S, S], False inside the cutout box and the padding.
    - ``"height"``, ``"width"``: size of the original (EXIF-corrected) image; ``"file_name"``,
      ``"image_id"``.
    """

    @configurable
    def __init__(
        self,
        *,
        augmentations: Sequence[T.Augmentation | T.Transform],
        image_format: str = "RGB",
        mask_source: str = "sa1b",
        mask_resolution: int = 256,
        max_masks: int = 0,
        strong_augmentation: StrongAugmentation | None = None,
        pad_size: tuple[int, int] | None = None,
        pad_value: Sequence[int] = (123, 117, 104),
        skip_bad_samples: bool = True,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        give_up_after: int = GIVE_UP_AFTER,
        dataset_names: Sequence[str] = (),
        dataset_size: int | None = None,
        downscale_to: tuple[int, int] | None = None,
    ) -> None:
        """
        Args:
            augmentations: detectron2 augmentations of the weak view (geometry limited to
                resize, crop and flips; see :func:`~pixelclip.data.masks.grid_source_indices`).
            image_format: "RGB" or "BGR".
            mask_source: "sa1b" (masks from the JSON) or "dino" (masks made by the model; no JSON).
            mask_resolution: side S of the mask grid.
            max_masks: keep at most this many masks, the largest first (0 = all).
            strong_augmentation: the student's view; None = the weak view, no cutout.
            pad_size: (H, W) to pad both views to when they are smaller (None = no padding).
            pad_value: fill colour of the padding, in ``image_format`` order.
            skip_bad_samples: log and return None on a bad sample (True) or raise (False).
            max_image_pixels: images with more pixels are bad samples, refused from the file
                header before decoding.
            give_up_after: raise :class:`TrainingDataError` when this many samples in a row had
                no usable mask (bad, or no mask on the grid; not counted for ``"dino"``).
            dataset_names: the datasets mapped (``DATASETS.TRAIN``); their metadata
                ``num_images``, once loaded, is the dataset size below.
            dataset_size: number of samples of the dataset (None: from ``dataset_names``, or
                unknown). When this many distinct samples were bad with no sample returned in
                between, every sample is bad: the mapper raises :class:`TrainingDataError`
                instead of returning None.
            downscale_to: ``(short, max_long)``: decode images larger than the resize of
                ``short`` (long edge at most ``max_long``) at that size (see the module
                docstring); None = decode at full size.
        """
        if mask_source not in MASK_SOURCES:
            raise ValueError(f"unknown mask source {mask_source!r}; choose from {MASK_SOURCES}")
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"unknown image format {image_format!r}; choose from 'RGB', 'BGR'")
        self.augmentations = T.AugmentationList(list(augmentations))
        self.image_format = image_format
        self.mask_source = mask_source
        self.mask_resolution = int(mask_resolution)
        self.max_masks = int(max_masks)
        self.strong_augmentation = strong_augmentation
        self.pad_size = tuple(pad_size) if pad_size else None
        self.pad_value = tuple(int(v) for v in pad_value)
        self.skip_bad_samples = skip_bad_samples
        if max_image_pixels < 1 or give_up_after < 1:
            raise ValueError(
                f"max_image_pixels ({max_image_pixels}) and give_up_after ({give_up_after}) must "
                "be >= 1"
            )
        self.max_image_pixels = int(max_image_pixels)
        self.give_up_after = int(give_up_after)
        self.dataset_names = tuple(dataset_names)
        self.dataset_size = dataset_size
        self.downscale_to = tuple(int(v) for v in downscale_to) if downscale_to else None
        # The downscale resizes like the weak view's own resize.
        resize = [a for a in self.augmentations.augs if isinstance(a, T.ResizeShortestEdge)]
        self._resize_interp = resize[0].interp if resize else Image.BILINEAR
        # The current streak of samples without a usable mask (per process: every data-loader
        # worker has its own copy of the mapper and of detectron2's replacement pool).
        self._unusable_in_a_row = 0
        self._bad_in_streak = 0  # bad samples among them
        # The distinct bad samples since the last sample returned (at most give_up_after).
        self._bad_since_returned: set[str] = set()
        self._reasons: list[str] = []

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict[str, Any]:
        if not is_train:
            raise ValueError("SA1BDatasetMapper builds training samples only (is_train=False)")
        # MODEL.PIXEL_MEAN is in INPUT.FORMAT's channel order, as everywhere in detectron2.
        pad_value = [round(v) for v in cfg.MODEL.PIXEL_MEAN]
        strong = None
        if cfg.INPUT.STRONG_AUG.ENABLED:
            strong = StrongAugmentation(
                color_jitter=cfg.INPUT.STRONG_AUG.COLOR_JITTER,
                color_jitter_prob=cfg.INPUT.STRONG_AUG.COLOR_JITTER_PROB,
                grayscale_prob=cfg.INPUT.STRONG_AUG.GRAYSCALE_PROB,
                blur_sigma=cfg.INPUT.STRONG_AUG.BLUR_SIGMA,
                blur_prob=cfg.INPUT.STRONG_AUG.BLUR_PROB,
                cutout_scale=cfg.INPUT.STRONG_AUG.CUTOUT_SCALE,
                fill=pad_value,
            )
        crop = cfg.INPUT.CROP
        pad_size = tuple(crop.SIZE) if crop.ENABLED and crop.TYPE == "absolute" else None
        downscale_to = None
        if cfg.DATASETS.SA1B.SHARDS and cfg.DATASETS.SA1B.DOWNSCALE:
            sizes = cfg.INPUT.MIN_SIZE_TRAIN
            short = max(sizes) if isinstance(sizes, (list, tuple)) else int(sizes)
            downscale_to = (short, cfg.INPUT.MAX_SIZE_TRAIN)
        return {
            "augmentations": build_weak_augmentations(cfg),
            "image_format": cfg.INPUT.FORMAT,
            "mask_source": cfg.INPUT.MASK_SOURCE,
            "mask_resolution": cfg.MODEL.PIXELCLIP.MASK_RESOLUTION,
            "max_masks": cfg.INPUT.MAX_MASKS_PER_IMAGE,
            "strong_augmentation": strong,
            "pad_size": pad_size,
            "pad_value": pad_value,
            "dataset_names": tuple(cfg.DATASETS.TRAIN),
            "downscale_to": downscale_to,
        }

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any] | None:
        """Map one dataset dict (``file_name`` and, for SA-1B masks, ``annotation_file``; or the
        in-memory fields of the module docstring).

        Returns:
            the training sample described in the class docstring, or None for a bad sample.

        Raises:
            TrainingDataError: too many samples in a row without a usable mask (see the module
                docstring).
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        try:
            out = self._map(dataset_dict)
        except BadSampleError as e:
            if not self.skip_bad_samples:
                raise
            reason = printable_path(str(e))
            logger.warning("Skipping a training sample: %s", reason)
            self._bad_since_returned.add(str(dataset_dict.get("file_name")))
            self._count_unusable(reason, bad=True)
            return None
        self._bad_since_returned.clear()
        if self.mask_source == "sa1b" and len(out["masks"]) == 0:
            self._count_unusable(
                f"{printable_path(out.get('annotation_file', out['file_name']))}: no mask left on "
                f"the {self.mask_resolution}x{self.mask_resolution} grid of the crop",
                bad=False,
            )
        else:
            self._unusable_in_a_row = self._bad_in_streak = 0
            self._reasons.clear()
        return out

    def _known_dataset_size(self) -> int | None:
        if self.dataset_size is not None:
            return int(self.dataset_size)
        sizes = [MetadataCatalog.get(n).get("num_images") for n in self.dataset_names]
        if not sizes or any(not isinstance(v, int) for v in sizes):
            return None
        return sum(sizes)

    def _count_unusable(self, reason: str, bad: bool) -> None:
        """Extend the streak of samples without a usable mask; give up when it is too long."""
        self._unusable_in_a_row += 1
        self._bad_in_streak += bad
        if len(self._reasons) < _REASONS_SHOWN and reason not in self._reasons:
            self._reasons.append(reason)
        size = self._known_dataset_size() if bad else None
        # Every sample failed since the last one returned: no replacement can succeed (and
        # detectron2's shrinking pool is empty, its next draw would fail with an unrelated error).
        all_bad = size is not None and len(self._bad_since_returned) >= size
        if self._unusable_in_a_row < self.give_up_after and not all_bad:
            return
        tried, bad_count = self._unusable_in_a_row, self._bad_in_streak
        why = (
            f"; all {size} samples of the dataset are bad"
            if all_bad
            else f" (the limit, give_up_after={self.give_up_after})"
        )
        raise TrainingDataError(
            f"no usable training sample: {tried} samples tried in a row had no usable mask "
            f"({bad_count} bad, {tried - bad_count} without a mask on the grid){why}. First files "
            "and reasons:\n  " + "\n  ".join(self._reasons) + "\nCheck the training data "
            "(DATASETS.TRAIN, DATASETS.SA1B.ROOT / ANNOTATION_ROOT); every skipped sample is "
            "also logged as a warning."
        )

    def _read_image(self, d: dict[str, Any]) -> tuple[np.ndarray, list[T.Transform]]:
        """The decoded image (of ``image_bytes`` when the dict has them, else of ``file_name``)
        and the transforms already applied to it (the downscale, or none), after cheap checks that
        keep a bad file from hanging or exhausting memory: a regular file (a FIFO would block
        ``open``), and at most ``max_image_pixels`` pixels according to the header (PIL reads only
        the header until pixels are needed)."""
        file_name = d["file_name"]
        data = d.get("image_bytes")
        if data is None:
            problem = regular_file_problem(file_name)
            if problem is not None:
                raise BadSampleError(f"{file_name}: cannot read the image ({problem})")

        def source():
            return file_name if data is None else io.BytesIO(data)

        try:
            with warnings.catch_warnings():
                # PIL warns above its own limit; the check below decides (and says so).
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(source()) as im:
                    width, height = im.size
        except Image.DecompressionBombError as e:  # raised by Image.open from the header
            raise BadSampleError(
                f"{file_name}: {e} (PIL's decompression-bomb limit); refused before decoding"
            ) from e
        except Exception as e:  # PIL raises many types on bad headers
            raise BadSampleError(f"{file_name}: cannot read the image ({e})") from e
        if width * height > self.max_image_pixels:
            raise BadSampleError(
                f"{file_name}: the image is {width}x{height} = {width * height} pixels, more than "
                f"the maximum of {self.max_image_pixels} (max_image_pixels); refused before "
                "decoding"
            )
        try:
            if data is None and self.downscale_to is None:
                return utils.read_image(file_name, format=self.image_format), []
            return self._decode(source())
        except Exception as e:  # truncated data, broken EXIF, ...: all mean "unreadable"
            raise BadSampleError(f"{file_name}: cannot read the image ({e})") from e

    def _decode(self, source) -> tuple[np.ndarray, list[T.Transform]]:
        """detectron2's ``read_image`` (EXIF orientation, then ``image_format``), downscaled as
        ``downscale_to`` asks: ``(image, [ResizeTransform from the original size])`` or
        ``(image, [])``."""
        with Image.open(source) as im:
            resize = None
            if self.downscale_to is not None:
                try:  # as detectron2's read_image: an unreadable EXIF block is no orientation
                    orientation = im.getexif().get(0x0112)
                except Exception:
                    orientation = None
                turned = orientation in (5, 6, 7, 8)  # EXIF orientation swaps h, w
                h, w = im.size if turned else im.size[::-1]
                new_h, new_w = T.ResizeShortestEdge.get_output_shape(h, w, *self.downscale_to)
                if new_h * new_w < h * w:
                    resize = T.ResizeTransform(h, w, new_h, new_w, self._resize_interp)
                    # JPEG only (a no-op otherwise): libjpeg's scaled decoding, never below the
                    # requested size, in the stored orientation.
                    im.draft(None, (new_h, new_w) if turned else (new_w, new_h))
            image = utils.convert_PIL_to_numpy(utils._apply_exif_orientation(im), self.image_format)
        if resize is None:
            return image, []
        if image.shape[:2] != (resize.new_h, resize.new_w):
            h, w = image.shape[:2]
            step = T.ResizeTransform(h, w, resize.new_h, resize.new_w, self._resize_interp)
            image = step.apply_image(image)
        return image, [resize]

    def _map(self, d: dict[str, Any]) -> dict[str, Any]:
        if d.get("bad_sample"):
            raise BadSampleError(str(d["bad_sample"]))
        file_name = d["file_name"]
        image, pre = self._read_image(d)
        # The original (EXIF-corrected) size, which the masks must have.
        height, width = (pre[0].h, pre[0].w) if pre else image.shape[:2]
        segmentations: list[dict] = []
        if self.mask_source == "sa1b":
            segmentations = self._load_segmentations(d, height, width)

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        weak = torch.from_numpy(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        strong, box = weak, None
        if self.strong_augmentation is not None:
            strong, box = self.strong_augmentation(weak)

        content_h, content_w = weak.shape[-2:]
        frame_h, frame_w = content_h, content_w
        if self.pad_size is not None:
            frame_h, frame_w = max(frame_h, self.pad_size[0]), max(frame_w, self.pad_size[1])
        weak, strong = self._pad(weak, frame_h, frame_w), self._pad(strong, frame_h, frame_w)

        valid = self._valid_grid(content_h, content_w, frame_h, frame_w, box)
        s = self.mask_resolution
        if segmentations:
            steps = [*pre, *transforms.transforms]
            rows, cols = grid_source_indices(steps, (height, width), (frame_h, frame_w), s)
            try:
                source = d.get("annotation_file", file_name)
                masks = sample_rle_masks(segmentations, rows, cols, source=source)
            except RLEFormatError as e:
                raise BadSampleError(str(e)) from e
            masks &= valid[None]
            masks = self._select(masks)
        else:
            masks = np.zeros((0, s, s), dtype=bool)

        d.pop("image_bytes", None)  # not needed in the batch
        d.pop("annotation_bytes", None)
        d.update(
            image=weak,
            image_strong=strong,
            masks=torch.from_numpy(masks),
            valid=torch.from_numpy(valid),
            height=height,
            width=width,
            image_id=d.get("image_id", file_name),
        )
        return d

    def _load_segmentations(self, d: dict[str, Any], height: int, width: int) -> list[dict]:
        json_file = d.get("annotation_file")
        data = d.get("annotation_bytes")
        if data is not None:
            json_file = json_file or f"{d['file_name']} (annotation)"
        elif not json_file:
            raise BadSampleError(f"{d['file_name']}: the dataset dict has no 'annotation_file'")
        try:
            if data is not None:
                segmentations, info = parse_sa1b_annotations(data, json_file)
            else:
                segmentations, info = load_sa1b_annotations(json_file)
        except SA1BFormatError as e:
            raise BadSampleError(str(e)) from e
        if not segmentations:
            raise BadSampleError(f"{json_file}: no annotations")
        if info is not None and "height" in info and "width" in info:
            h, w = as_dimension(info["height"]), as_dimension(info["width"])
            if h is None or w is None:
                raise BadSampleError(
                    f"{json_file}: 'image' has height {info['height']!r} and width "
                    f"{info['width']!r}; expected two positive integers"
                )
            if (h, w) != (height, width):
                raise BadSampleError(
                    f"{json_file}: 'image' says {h}x{w}, but "
                    f"{d['file_name']} is {height}x{width} (after EXIF orientation)"
                )
        for i, seg in enumerate(segmentations):
            size = seg["size"]
            dims = (
                [as_dimension(v) for v in size]
                if isinstance(size, (list, tuple)) and len(size) == 2
                else None
            )
            if dims is None or None in dims:
                raise BadSampleError(
                    f"{json_file}: annotation {i} has size {size!r}; expected [h, w], two "
                    "positive integers"
                )
            if dims != [height, width]:
                raise BadSampleError(
                    f"{json_file}: annotation {i} has size {size}, but {d['file_name']} is "
                    f"{height}x{width} (after EXIF orientation)"
                )
        return segmentations

    def _pad(self, image: torch.Tensor, frame_h: int, frame_w: int) -> torch.Tensor:
        h, w = image.shape[-2:]
        if (h, w) == (frame_h, frame_w):
            return image
        out = torch.tensor(self.pad_value, dtype=image.dtype)[:, None, None].repeat(
            1, frame_h, frame_w
        )
        out[:, :h, :w] = image
        return out

    def _valid_grid(
        self,
        content_h: int,
        content_w: int,
        frame_h: int,
        frame_w: int,
        box: tuple[int, int, int, int] | None,
    ) -> np.ndarray:
        """bool (S, S): grid points on the image (not padding) and outside the cutout box."""
        rows = torch_nearest_indices(frame_h, self.mask_resolution)
        cols = torch_nearest_indices(frame_w, self.mask_resolution)
        valid = (rows < content_h)[:, None] & (cols < content_w)[None, :]
        if box is not None:
            y0, x0, y1, x1 = box
            valid &= ~(((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None])
        return valid

    def _select(self, masks: np.ndarray) -> np.ndarray:
        """Drop empty masks; keep the ``max_masks`` largest (stable on ties)."""
        areas = masks.sum(axis=(1, 2))
        order = np.argsort(-areas, kind="stable")
        order = order[areas[order] > 0]
        if self.max_masks > 0:
            order = order[: self.max_masks]
        return masks[order]
