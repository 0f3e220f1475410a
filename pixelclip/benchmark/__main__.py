"""``python -m pixelclip.benchmark``: the command of tools/benchmark.py (each isolated benchmark
runs this way in its own interpreter)."""

from .runner import main

main()
