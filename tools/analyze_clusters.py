#!/usr/bin/env python3
"""What the label-free clusters of a PixelCLIP checkpoint learned: nearest class names, matching
to a labelled dataset's classes (Hungarian / many-to-one mIoU and pixel accuracy), a 2-D map of
prompts and names, the image regions of each cluster.

``--help`` lists the options and outputs; the logic is in ``pixelclip/analysis/``.

Example:
  tools/analyze_clusters.py --config-file output/quickstart/seed0/config.yaml \\
      --weights output/quickstart/seed0/model_final.pth --dataset toyworld_test_sem_seg
"""

import sys
from pathlib import Path

# Allow running from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixelclip.analysis.cli import main  # noqa: E402
from pixelclip.logs import setup_logging  # noqa: E402

if __name__ == "__main__":
    setup_logging()
    sys.exit(main())
