#!/usr/bin/env python
"""Generate class-agnostic masks (SAM or DINO k-means) for a folder of images, one SA-1B-format
JSON per image. ``--help`` lists the options; the logic is in ``pixelclip/masks/``.

Example::

    python tools/generate_masks.py --input photos/ --output masks/ --source sam \\
        --sam-model vit_h --sam-checkpoint weights/sam_vit_h_4b8939.pth --device cuda
"""

import sys
from pathlib import Path

# Allow `python tools/generate_masks.py` from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixelclip.logs import setup_logging  # noqa: E402
from pixelclip.masks.cli import main  # noqa: E402

if __name__ == "__main__":
    setup_logging()
    sys.exit(main())
