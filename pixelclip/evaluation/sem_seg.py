"""detectron2's ``SemSegEvaluator`` with the label maps checked before they are scored.

detectron2 reads each label PNG itself and trusts it: a value ``C`` (one past the last class) is
counted as "ignore" without a word, larger values shift pixels into other classes' rows of the
confusion matrix or stop the run with a numpy reshape error, and a 3-channel (RGB) map or a map of
another size than the image fails deep inside numpy -- or, when the test mapper resizes the
image, inside detectron2's transform with "Input size mismatch" and no file name.
:class:`CheckedSemSegEvaluator` refuses all of these with a :class:`LabelMapError` that names the
file and what was expected, so a bad benchmark stops the evaluation instead of giving wrong
numbers:

* :meth:`~CheckedSemSegEvaluator.reset` reads only the headers of every label map and image of
  the dataset (no pixel is decoded): a regular file (a FIFO is never opened), a single channel of
  integers (PIL mode 1, L, P or I*), and the image's size after its EXIF orientation (the size
  detectron2's test mapper and the model use);
* :meth:`~CheckedSemSegEvaluator.process` checks the decoded values, one pass over each map:
  ``0..C-1`` or the dataset's ``ignore_label`` (255, or 65535 in the 16-bit maps of Context-459
  and ADE-847), and the size of the model's prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.evaluation import SemSegEvaluator
from PIL import Image

from ..data.sa1b import printable_path, regular_file_problem

__all__ = ["CheckedSemSegEvaluator", "LabelMapError", "SINGLE_CHANNEL_MODES"]

logger = logging.getLogger(__name__)

# PIL modes of single-channel integer images (1-bit, 8-bit grey, palette indices, 16/32-bit).
SINGLE_CHANNEL_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")
_EXIF_ORIENTATION = 0x0112
_VALUES_SHOWN = 5


class LabelMapError(ValueError):
    """A label map that cannot be scored (the message names the file and what was expected)."""


def _displayed_size(path: str) -> tuple[int, int]:
    """(height, width) of an image as detectron2's ``read_image`` returns it (EXIF-oriented)."""
    with Image.open(path) as im:
        width, height = im.size
        try:
            orientation = im.getexif().get(_EXIF_ORIENTATION)
        except Exception:  # detectron2 ignores unreadable EXIF data too
            orientation = None
    # Orientations 5-8 rotate by 90 degrees (read_image transposes them).
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


class CheckedSemSegEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` that validates every label map (see the module docstring).

    Args:
        dataset_name: a registered dataset with ``file_name`` / ``sem_seg_file_name`` dicts and
            ``stuff_classes`` / ``ignore_label`` metadata.
        distributed, output_dir: as for ``SemSegEvaluator``.
    """

    def __init__(
        self, dataset_name: str, distributed: bool = True, output_dir: str | None = None
    ) -> None:
        super().__init__(
            dataset_name,
            distributed=distributed,
            output_dir=output_dir,
            sem_seg_loading_fn=self._load_checked,
        )
        self._headers_checked = False
        # (image file, expected (height, width)) of the label map being loaded by process().
        self._current: tuple[str, tuple[int, int]] | None = None

    def reset(self) -> None:
        super().reset()
        if not self._headers_checked:  # once: the dataset does not change between runs
            self._check_headers(DatasetCatalog.get(self._dataset_name))
            self._headers_checked = True

    def _check_headers(self, dicts: Sequence[dict[str, Any]]) -> None:
        """Label maps: regular single-channel files of their image's size (headers only)."""
        for d in dicts:
            image, label = d["file_name"], d["sem_seg_file_name"]
            for path, what in ((label, "label map"), (image, "image")):
                problem = regular_file_problem(path)
                if problem is not None:
                    raise LabelMapError(f"{printable_path(path)}: {what} is {problem}")
            try:
                with Image.open(label) as im:
                    mode, (width, height) = im.mode, im.size
                    bands = len(im.getbands())
                image_size = _displayed_size(image)
            except LabelMapError:
                raise
            except Exception as e:  # PIL raises many types on unreadable headers
                raise LabelMapError(
                    f"{printable_path(label)} / {printable_path(image)}: cannot read the header "
                    f"({e})"
                ) from e
            if mode not in SINGLE_CHANNEL_MODES:
                raise LabelMapError(
                    f"{printable_path(label)}: label map has PIL mode {mode} ({bands} channels); "
                    "expected a single-channel image of class indices (mode L, P or I), as the "
                    "datasets/prepare_*.py scripts write"
                )
            if (height, width) != image_size:
                raise LabelMapError(
                    f"{printable_path(label)}: label map is {height}x{width} (h x w), but its "
                    f"image {printable_path(image)} is {image_size[0]}x{image_size[1]}; expected "
                    "the same size"
                )

    def process(self, inputs, outputs) -> None:
        # One input at a time, so that the loading function knows which image it serves.
        for inp, out in zip(inputs, outputs):
            prediction_size = tuple(out["sem_seg"].shape[-2:])
            self._current = (inp["file_name"], prediction_size)
            try:
                super().process([inp], [out])
            finally:
                self._current = None

    def _load_checked(self, filename: str, dtype: Any = int) -> np.ndarray:
        """The label map as detectron2 reads it, after checking its shape and values."""
        with open(filename, "rb") as f, Image.open(f) as im:
            if im.mode not in SINGLE_CHANNEL_MODES:  # changed since reset()
                raise LabelMapError(
                    f"{printable_path(filename)}: label map has PIL mode {im.mode}; expected a "
                    "single-channel image of class indices"
                )
            labels = np.array(im, dtype=dtype)
        if self._current is not None:
            image, size = self._current
            if labels.shape != size:
                raise LabelMapError(
                    f"{printable_path(filename)}: label map is {labels.shape[0]}x"
                    f"{labels.shape[1]}, but the prediction for {printable_path(image)} is "
                    f"{size[0]}x{size[1]}; expected the image's size"
                )
        num_classes, ignore = self._num_classes, self._ignore_label
        low, high = int(labels.min(initial=0)), int(labels.max(initial=0))
        # Most maps hold 0..C-1 and the ignore label; only then is a second pass needed.
        if low < 0 or high >= num_classes:
            bad = (labels < 0) | ((labels >= num_classes) & (labels != ignore))
            if bad.any():
                values = np.unique(labels[bad])
                shown = ", ".join(str(v) for v in values[:_VALUES_SHOWN])
                extra = len(values) - _VALUES_SHOWN
                more = f" and {extra} more" if extra > 0 else ""
                raise LabelMapError(
                    f"{printable_path(filename)}: label value(s) {shown}{more} in "
                    f"{int(bad.sum())} pixels; dataset {self._dataset_name!r} has "
                    f"{num_classes} classes, so expected 0..{num_classes - 1} or the ignore "
                    f"label {ignore}"
                )
        return labels
