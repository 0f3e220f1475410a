"""PixelCLIP on detectron2: open-vocabulary semantic segmentation without semantic labels.

Importing the package registers its detectron2 components (meta-architecture, backbone, head,
datasets) and does nothing else: no disk access, no network, no seeding, no device placement.
"""

from . import data, modeling, toyworld  # noqa: F401  (registration)
from .config import add_pixelclip_config
from .inference import Predictor

__all__ = ["Predictor", "add_pixelclip_config"]
