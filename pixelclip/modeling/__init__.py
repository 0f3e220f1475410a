"""PixelCLIP's model components; importing registers the backbone, head and meta-architecture."""

from .backbone import CLIPDenseBackbone
from .head import PixelCLIPHead
from .meta_arch import PixelCLIP

__all__ = ["CLIPDenseBackbone", "PixelCLIPHead", "PixelCLIP"]
