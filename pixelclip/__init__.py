"""PixelCLIP on detectron2: open-vocabulary semantic segmentation without semantic labels.

Importing the package registers its detectron2 components (meta-architecture, backbone, head,
datasets) and does nothing else: no disk access, no network, no seeding, no device placement.
"""

import warnings

with warnings.catch_warnings():
    # detectron2 and fvcore apply torch.jit.script at import time, which torch 2.14
    # deprecates with a FutureWarning per function: noise users can do nothing about. Imported
    # here once, silenced for that import only.
    warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
    import detectron2.modeling  # noqa: F401  (imports fvcore.nn, detectron2.layers)

from . import data, modeling, toyworld  # noqa: E402, F401  (registration)
from .config import add_pixelclip_config
from .inference import Predictor

__all__ = ["Predictor", "add_pixelclip_config"]
