#!/usr/bin/env python
"""Pre-downscale SA-1B images and masks by a factor (the reference trains on half-size data).

``--help`` lists the options; the logic (resumable, verified writes) is in
``pixelclip/data/prepare_sa1b.py``.

Example::

    python tools/prepare_sa1b.py --src /data/sa1b_full --dst datasets/sa1b --factor 2 \\
        --subset sa1b_5percent.txt --workers 8
"""

import sys
from pathlib import Path

# Allow running from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixelclip.data.prepare_sa1b import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
