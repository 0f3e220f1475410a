#!/usr/bin/env python
"""Benchmarks of PixelCLIP on this machine: training step, inference, data mapper, matmul.

``--help`` lists the benchmarks and options; the workloads are in ``pixelclip/benchmark/``.
See docs/PERFORMANCE.md.

Usage:
    python tools/benchmark.py --output benchmark.json               # everything (slow on CPU)
    python tools/benchmark.py --only train:vit:base matmul --repeats 3
    python tools/benchmark.py --quick --output /tmp/quick.json      # tiny models, seconds
"""

import sys
from pathlib import Path

# Allow running from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixelclip.benchmark.runner import main  # noqa: E402

if __name__ == "__main__":
    main()
