#!/usr/bin/env python3
"""ToyWorld quickstart (`make demo`): baseline CLIP vs. PixelCLIP on a synthetic world, on the CPU.

``--help`` lists the steps and options; the pipeline is ``pixelclip/toyworld/quickstart.py``.

Examples:
  tools/quickstart.py --output-dir output/quickstart
  tools/quickstart.py --output-dir output/qs3 --seeds 0 1 2
"""

import sys
from pathlib import Path

# Allow running from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixelclip.toyworld.quickstart import main  # noqa: E402

if __name__ == "__main__":
    main()
