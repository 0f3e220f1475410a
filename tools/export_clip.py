#!/usr/bin/env python
"""Export PixelCLIP's fine-tuned CLIP as an open_clip checkpoint, for use in other frameworks.

``--help`` explains the output and the options; the logic is in
``pixelclip/checkpoint/open_clip_export.py`` (front end: ``pixelclip/checkpoint/cli.py``).

Example::

    python tools/export_clip.py output/model_final.pth exported/pixelclip_vitb16.safetensors \\
        --model-name ViT-B-16 --force-quick-gelu --base-weights weights/ViT-B-16.pt
"""

import sys
from pathlib import Path

# Allow `python tools/export_clip.py` from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixelclip.checkpoint.cli import export_clip_main as main  # noqa: E402
from pixelclip.logs import setup_logging  # noqa: E402

if __name__ == "__main__":
    setup_logging()
    sys.exit(main())
