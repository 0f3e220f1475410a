"""Class-agnostic masks for unlabeled images (docs/METHOD.md §8), the training signal of PixelCLIP.

* :mod:`.dino`: k-means on DINO patch features (also computed online during training, with
  ``INPUT.MASK_SOURCE: "dino"``);
* :mod:`.sam`: segment-anything's automatic mask generator over a safely loaded SAM;
* :mod:`.writer`: the resumable loop that writes one SA-1B-format JSON per image;
* :mod:`.cli`: the command-line front end of ``tools/generate_masks.py``.
"""

from .dino import DinoMaskGenerator, dino_mask_fn, kmeans, load_dino_state_dict
from .sam import load_sam, sam_mask_fn, sam_model_type
from .writer import MaskFn, find_images, generate_masks, output_paths

__all__ = [
    "DinoMaskGenerator",
    "MaskFn",
    "dino_mask_fn",
    "find_images",
    "generate_masks",
    "kmeans",
    "load_dino_state_dict",
    "load_sam",
    "output_paths",
    "sam_mask_fn",
    "sam_model_type",
]
