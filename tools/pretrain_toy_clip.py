#!/usr/bin/env python3
"""Pretrain the small ToyWorld CLIP ("toy-clip") contrastively on ToyWorld's captions.

``--help`` describes the recipe and the options; the logic is in ``pixelclip/toyworld/pretrain.py``.

Example:
  tools/pretrain_toy_clip.py --output output/toy_clip
"""

import sys
from pathlib import Path

# Allow running from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixelclip.toyworld.pretrain import main  # noqa: E402

if __name__ == "__main__":
    main()
