"""SAM masks: checkpoints through the project's safe reader, and the automatic mask generator.

segment-anything's own builders call ``torch.load`` without ``weights_only``, so their safety
depends on torch's default and on ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``; here the model is built
empty and the tensors come from :func:`pixelclip.checkpoint.read_checkpoint`, strictly. The model
type is read from the file. :func:`sam_mask_fn` turns a loaded SAM into the mask function of
:func:`pixelclip.masks.writer.generate_masks`.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor, nn

from ..checkpoint.reference import check_state_dict_matches
from ..checkpoint.safe_io import read_checkpoint

if TYPE_CHECKING:
    from .writer import MaskFn

logger = logging.getLogger(__name__)

__all__ = ["AUTO", "load_sam", "sam_mask_fn", "sam_model_type"]

AUTO = "auto"
# Width of SAM's image encoder (its patch embedding's output channels) -> registry name.
SAM_TYPES_BY_WIDTH = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
PATCH_KEY = "image_encoder.patch_embed.proj.weight"


def sam_model_type(sd: dict[str, Tensor], source: str = "SAM checkpoint") -> str:
    """The ``sam_model_registry`` name of the released SAM whose weights ``sd`` holds.

    Raises:
        ValueError: no image encoder in ``sd``, or a width of none of the released models.
    """
    weight = sd.get(PATCH_KEY)
    if weight is None:
        raise ValueError(f"{source}: no {PATCH_KEY}; not a segment-anything SAM checkpoint")
    width = int(weight.shape[0])
    if width not in SAM_TYPES_BY_WIDTH:
        raise ValueError(
            f"{source}: image encoder width {width} is none of the released SAM models "
            f"{SAM_TYPES_BY_WIDTH}; pass --sam-model with the architecture's registry name"
        )
    return SAM_TYPES_BY_WIDTH[width]


def load_sam(checkpoint: str | os.PathLike, model_type: str = AUTO) -> nn.Module:
    """Build a SAM of ``model_type`` (``"auto"``: read from the file) and load ``checkpoint``.

    Args:
        checkpoint: a local SAM weight file (e.g. ``sam_vit_h_4b8939.pth``).
        model_type: a name in segment-anything's ``sam_model_registry``, or "auto".

    Returns:
        The SAM model in eval mode, on the CPU.

    Raises:
        ValueError: refused or damaged file, unknown type, or weights that do not match the
            architecture (the message names the file and the keys).
    """
    from segment_anything import sam_model_registry

    source = os.fspath(checkpoint)
    sd = read_checkpoint(source, what="SAM checkpoint")["model"]
    if model_type == AUTO:
        model_type = sam_model_type(sd, source)
        logger.info("%s: SAM model type %s (read from the file)", source, model_type)
    if model_type not in sam_model_registry:
        raise ValueError(
            f"unknown SAM model type {model_type!r}; choose from {sorted(sam_model_registry)}"
        )
    model = sam_model_registry[model_type]()  # checkpoint=None: random weights, replaced below
    check_state_dict_matches(sd, model.state_dict(), f"{source} (SAM {model_type})")
    model.load_state_dict(sd, strict=True)
    return model.eval()


def sam_mask_fn(sam: nn.Module, **generator_kwargs: Any) -> MaskFn:
    """Mask function of segment-anything's ``SamAutomaticMaskGenerator`` around a built ``Sam``."""
    from segment_anything import SamAutomaticMaskGenerator

    generator = SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **generator_kwargs)

    def fn(image: np.ndarray) -> list[dict[str, Any]]:
        return generator.generate(image)

    return fn
