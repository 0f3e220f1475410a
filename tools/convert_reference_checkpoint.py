#!/usr/bin/env python
"""Convert a checkpoint of the reference PixelCLIP code to this project's format.

``--help`` explains the mapping and the exit codes; the logic is in
``pixelclip/checkpoint/reference.py`` (front end: ``pixelclip/checkpoint/cli.py``).

Example::

    python tools/convert_reference_checkpoint.py weights/pixelclip_vit_base.pth \\
        weights/pixelclip_vit_base_ours.pth --config-file configs/reference/pixelclip_vit_base.yaml
"""

import sys
from pathlib import Path

# Allow `python tools/convert_reference_checkpoint.py` from a checkout without installing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixelclip.checkpoint.cli import convert_reference_main as main  # noqa: E402
from pixelclip.logs import setup_logging  # noqa: E402

if __name__ == "__main__":
    setup_logging()
    sys.exit(main())
