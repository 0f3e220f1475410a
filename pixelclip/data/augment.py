"""Photometric augmentations of the training views (docs/METHOD.md §8).

- :class:`RandomColorAugSSD`: the SSD colour augmentation of the weak view, as a detectron2
  ``Augmentation`` whose random draws are made in ``get_transform`` (so the returned
  :class:`ColorAugSSDTransform` is deterministic and can be inspected or replayed).
- :class:`StrongAugmentation`: the student's strong view: colour jitter, random grayscale,
  Gaussian blur and one cutout box.

All random numbers come from numpy's global RNG, like detectron2's own augmentations; detectron2
seeds it per data-loader worker, and ``np.random.seed`` makes a run reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torchvision.transforms.functional as TF
from detectron2.data import transforms as T
from torch import Tensor

__all__ = ["ColorAugSSDTransform", "RandomColorAugSSD", "StrongAugmentation"]


class ColorAugSSDTransform(T.Transform):
    """SSD photometric distortion with fixed parameters (geometry unchanged).

    Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016 (caffe ``im_transforms.cpp``).
    Steps, each skipped when its parameter is None: brightness (add ``brightness``), then either
    contrast, saturation, hue or saturation, hue, contrast (``contrast_first``). Contrast
    multiplies all channels; saturation multiplies S and hue adds to H in OpenCV's 8-bit HSV
    (H in [0, 180)). Every step clips to [0, 255] and truncates to uint8.
    """

    is_photometric = True

    def __init__(
        self,
        img_format: str,
        brightness: float | None,
        contrast: float | None,
        saturation: float | None,
        hue: int | None,
        contrast_first: bool,
    ) -> None:
        super().__init__()
        if img_format not in ("RGB", "BGR"):
            raise ValueError(f"unknown image format {img_format!r}; choose from 'RGB', 'BGR'")
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if self.brightness is not None:
            img = _affine(img, 1.0, self.brightness)
        steps = [self._saturation, self._hue]
        steps = [self._contrast, *steps] if self.contrast_first else [*steps, self._contrast]
        for step in steps:
            img = step(img)
        return img

    def _contrast(self, img: np.ndarray) -> np.ndarray:
        return img if self.contrast is None else _affine(img, self.contrast, 0.0)

    def _saturation(self, img: np.ndarray) -> np.ndarray:
        if self.saturation is None:
            return img
        hsv = cv2.cvtColor(img, self._to_hsv)
        hsv[:, :, 1] = _affine(hsv[:, :, 1], self.saturation, 0.0)
        return cv2.cvtColor(hsv, self._from_hsv)

    def _hue(self, img: np.ndarray) -> np.ndarray:
        if self.hue is None:
            return img
        hsv = cv2.cvtColor(img, self._to_hsv)
        hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int32) + self.hue) % 180).astype(np.uint8)
        return cv2.cvtColor(hsv, self._from_hsv)

    @property
    def _to_hsv(self) -> int:
        return cv2.COLOR_RGB2HSV if self.img_format == "RGB" else cv2.COLOR_BGR2HSV

    @property
    def _from_hsv(self) -> int:
        return cv2.COLOR_HSV2RGB if self.img_format == "RGB" else cv2.COLOR_HSV2BGR

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation


def _affine(img: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


class RandomColorAugSSD(T.Augmentation):
    """Draws the parameters of :class:`ColorAugSSDTransform` (each step with probability 1/2)."""

    def __init__(
        self,
        img_format: str = "RGB",
        brightness_delta: float = 32.0,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> ColorAugSSDTransform:
        def maybe(draw):
            return draw() if np.random.rand() < 0.5 else None

        brightness = maybe(lambda: np.random.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = bool(np.random.rand() < 0.5)
        contrast = maybe(lambda: np.random.uniform(*self.contrast_range))
        saturation = maybe(lambda: np.random.uniform(*self.saturation_range))
        hue = maybe(lambda: int(np.random.randint(-self.hue_delta, self.hue_delta + 1)))
        return ColorAugSSDTransform(
            self.img_format, brightness, contrast, saturation, hue, contrast_first
        )


class StrongAugmentation:
    """The student's strong view of a crop (docs/METHOD.md §8), torchvision semantics.

    In order: ``ColorJitter(*color_jitter)`` with probability ``color_jitter_prob`` (factors drawn
    uniformly in [max(0, 1 - x), 1 + x], hue in [-h, h], the four adjustments in random order, as
    torchvision's ``ColorJitter``); ``RandomGrayscale`` with probability ``grayscale_prob``
    (3 equal channels); Gaussian blur with probability ``blur_prob``, sigma uniform in
    ``blur_sigma`` and a kernel of side 2 * ceil(3 sigma) + 1 (covering +-3 sigma; torchvision
    needs an explicit size); finally, always, one cutout box whose height and width are uniform
    fractions in ``cutout_scale`` of the image's height and width, placed uniformly inside the
    image and filled with ``fill`` (by default CLIP's mean colour, i.e. 0 after normalisation).
    The box is drawn after the blur so that its edges stay sharp.
    """

    def __init__(
        self,
        *,
        color_jitter: Sequence[float] = (0.5, 0.5, 0.5, 0.25),
        color_jitter_prob: float = 0.8,
        grayscale_prob: float = 0.2,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        blur_prob: float = 0.5,
        cutout_scale: Sequence[float] = (0.1, 0.5),
        fill: Sequence[int] = (123, 117, 104),
    ) -> None:
        if len(color_jitter) != 4 or len(blur_sigma) != 2 or len(cutout_scale) != 2:
            raise ValueError(
                "color_jitter needs 4 values, blur_sigma and cutout_scale 2 each; got "
                f"{list(color_jitter)}, {list(blur_sigma)}, {list(cutout_scale)}"
            )
        if not 0 <= cutout_scale[0] <= cutout_scale[1] <= 1:
            raise ValueError(f"cutout_scale must satisfy 0 <= min <= max <= 1, got {cutout_scale}")
        self.color_jitter = tuple(float(v) for v in color_jitter)
        self.color_jitter_prob = float(color_jitter_prob)
        self.grayscale_prob = float(grayscale_prob)
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.blur_prob = float(blur_prob)
        self.cutout_scale = (float(cutout_scale[0]), float(cutout_scale[1]))
        self.fill = tuple(int(v) for v in fill)

    def __call__(self, image: Tensor) -> tuple[Tensor, tuple[int, int, int, int] | None]:
        """Augment one image.

        Args:
            image: uint8 Tensor[3, H, W] (RGB or BGR; grayscale weights assume RGB).

        Returns:
            ``(strong, box)``: the uint8 Tensor[3, H, W] strong view and the cutout box
            ``(y0, x0, y1, x1)`` (half-open pixel ranges), or None when the scale is [0, 0].
        """
        if np.random.rand() < self.color_jitter_prob:
            image = self._jitter(image)
        if np.random.rand() < self.grayscale_prob:
            image = TF.rgb_to_grayscale(image, num_output_channels=3)
        if np.random.rand() < self.blur_prob:
            sigma = float(np.random.uniform(*self.blur_sigma))
            size = 2 * math.ceil(3 * sigma) + 1
            image = TF.gaussian_blur(image, [size, size], [sigma, sigma])
        box = self._cutout_box(image.shape[-2], image.shape[-1])
        if box is not None:
            y0, x0, y1, x1 = box
            image = image.clone()
            image[:, y0:y1, x0:x1] = torch.tensor(self.fill, dtype=image.dtype)[:, None, None]
        return image, box

    def _jitter(self, image: Tensor) -> Tensor:
        brightness, contrast, saturation, hue = self.color_jitter
        ops = [
            (TF.adjust_brightness, np.random.uniform(max(0.0, 1 - brightness), 1 + brightness)),
            (TF.adjust_contrast, np.random.uniform(max(0.0, 1 - contrast), 1 + contrast)),
            (TF.adjust_saturation, np.random.uniform(max(0.0, 1 - saturation), 1 + saturation)),
            (TF.adjust_hue, np.random.uniform(-hue, hue)),
        ]
        for i in np.random.permutation(4):
            op, factor = ops[i]
            if self.color_jitter[i] > 0:  # a zero range is the identity; skip its cost
                image = op(image, float(factor))
        return image

    def _cutout_box(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        if self.cutout_scale[1] <= 0:
            return None
        box_h = max(1, round(np.random.uniform(*self.cutout_scale) * height))
        box_w = max(1, round(np.random.uniform(*self.cutout_scale) * width))
        y0 = int(np.random.randint(0, height - box_h + 1))
        x0 = int(np.random.randint(0, width - box_w + 1))
        return y0, x0, y0 + box_h, x0 + box_w
