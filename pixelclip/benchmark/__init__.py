"""Benchmarks of PixelCLIP on this machine (``tools/benchmark.py``; docs/PERFORMANCE.md).

One module per workload: :mod:`.train` (a training iteration, and its per-phase profile),
:mod:`.infer` (one image with a 150-class vocabulary), :mod:`.mapper` (the training mapper
against a yardstick mapper), :mod:`.shards` (a data-loader worker on SA-1B tar shards against the
extracted folder) and :mod:`.matmul` (the GFLOP/s yardstick); :mod:`.common` holds the
settings, timing and counting they share; :mod:`.runner` runs each benchmark in its own process
and writes the report. ``python -m pixelclip.benchmark`` is the same command as the tool.
"""
