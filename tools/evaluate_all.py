#!/usr/bin/env python3
"""Evaluate a PixelCLIP checkpoint, or plain CLIP as the baseline, on several benchmarks and write
the paper-style table (results.md) and the full record (results.json).

``--help`` lists the benchmark aliases and options; the logic is in
``pixelclip/evaluation/evaluate_all.py``.

Example:
  tools/evaluate_all.py --config-file configs/pixelclip_vitb16_sa1b_bs48_10k.yaml --baseline
"""

import sys
from pathlib import Path

# Allow running from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixelclip.evaluation.evaluate_all import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
