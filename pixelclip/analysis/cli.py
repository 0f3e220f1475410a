"""Command line of ``tools/analyze_clusters.py``: what the label-free clusters learned.

For each learned class (cluster) of a PixelCLIP checkpoint: its nearest class names in a
vocabulary (cosine of the text embeddings); on a labelled dataset, the matching of the k clusters
to the C classes by pixel overlap of the cluster-argmax map (Hungarian, and many-to-one) with the
unsupervised-segmentation mIoU and pixel accuracy; a 2-D map of prompts and names; a grid of the
image regions assigned to each cluster. Outputs in --output: results.json, index.md,
embedding_map.png, cluster_regions.png.

Examples:
  tools/analyze_clusters.py --config-file output/quickstart/seed0/config.yaml \\
      --weights output/quickstart/seed0/model_final.pth --dataset toyworld_test_sem_seg \\
      --output output/quickstart/clusters
  tools/analyze_clusters.py --config-file run/config.yaml --weights run/model_final.pth \\
      --vocabulary ade20k_150 --dataset ade20k_150_val_sem_seg --max-images 200
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..cli_help import HelpFormatter
from .run import NAME_PROMPTS, analyze_checkpoint

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/analyze_clusters.py",
        description=__doc__.split("\n\n", 1)[1].split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the run's config")
    parser.add_argument(
        "--weights", default="", metavar="FILE", help="checkpoint ('' = MODEL.WEIGHTS)"
    )
    parser.add_argument(
        "--vocabulary",
        default=None,
        help="names for the nearest-name table: 'sky, grass | lawn, ...', a JSON file, or a "
        "dataset / class-list name; None = the classes of --dataset",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="a registered labelled sem-seg dataset for the matching, the scores and the region "
        "grid (without it: nearest names and the embedding map only)",
    )
    parser.add_argument(
        "--max-images", type=int, default=0, metavar="N", help="first N images (0 = all)"
    )
    parser.add_argument("--output", default="output/clusters", metavar="DIR", help="output folder")
    parser.add_argument("--top", type=int, default=3, help="nearest names per cluster")
    parser.add_argument(
        "--tiles", type=int, default=4, help="regions per cluster in cluster_regions.png (0: none)"
    )
    parser.add_argument("--tile-side", type=int, default=64, help="side of a region tile (px)")
    parser.add_argument(
        "--name-prompts",
        choices=NAME_PROMPTS,
        default="template",
        help="embed names with the learned classes' own template (MODEL.PROMPT.TEMPLATE) or with "
        "the test-time ensemble (MODEL.PIXELCLIP.TEST.PROMPT_ENSEMBLE)",
    )
    parser.add_argument("--device", default=None, help="cpu / cuda (default: MODEL.DEVICE)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config overrides, e.g. MODEL.PIXELCLIP.TEST.PROTOCOL slide",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the analysis; returns 0, or 2 with the error on stderr for bad input."""
    from ..config import build_config

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = build_config(args.config_file, args.opts)
        if args.device:
            cfg.MODEL.DEVICE = args.device
        result = analyze_checkpoint(
            cfg,
            args.weights or cfg.MODEL.WEIGHTS,
            args.output,
            dataset=args.dataset,
            vocabulary=args.vocabulary,
            max_images=args.max_images,
            tiles=args.tiles,
            tile_side=args.tile_side,
            top=args.top,
            name_prompts=args.name_prompts,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    if "hungarian" in result:
        h = result["hungarian"]
        logger.info("Hungarian mIoU %.1f, pixel accuracy %.1f", h["mIoU"], h["pixel_accuracy"])
    logger.info("written: %s", Path(args.output) / "index.md")
    return 0
