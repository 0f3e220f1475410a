#!/usr/bin/env python
"""Export PixelCLIP inference to ONNX with an open vocabulary; needs the ``[onnx]`` extra.

``graphs`` writes ``image.onnx`` (uint8 RGB image (H, W, 3), any size -> dense features, the
test protocol's normalisation, resizing or windows and the dense read-out inside), ``head.onnx``
(features + text embeddings (C, D) + image size -> (C, H, W) cosine scores) and
``pixelclip_onnx.json``, then checks onnxruntime against PyTorch on random images. ``text``
writes the prompt-ensembled text embeddings of a vocabulary as .npy (names in a .json beside
it). The logic is in ``pixelclip/inference/onnx_export.py``.

Examples::

    python tools/export_onnx.py graphs --config-file output/config.yaml \\
        --weights output/model_final.pth --output-dir onnx/ --vocabulary "cat, dog | puppy"
    python tools/export_onnx.py text --weights output/model_final.pth \\
        --vocabulary ade20k_150 --output onnx/ade20k_150.npy
    python tools/export_onnx.py graphs --config-file configs/toyworld/pixelclip_toyclip.yaml \\
        --weights "" --output-dir onnx-toy/ --protocol slide

Exit code: 0 on success, 1 when onnxruntime differs from PyTorch by more than --tolerance, 2 on
a usage or setup error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pixelclip.cli_help import HelpFormatter

# Allow `python tools/export_onnx.py` from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("pixelclip.export_onnx")

CHECK_VOCABULARY = "cat, dog | puppy, grass, sky"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Examples::") :].replace("::", ":"),
        formatter_class=HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    graphs = commands.add_parser("graphs", help="write image.onnx, head.onnx and check them")
    text = commands.add_parser("text", help="write the text embeddings of a vocabulary (.npy)")
    for sub in (graphs, text):
        sub.add_argument(
            "--config-file",
            metavar="FILE",
            help="The run's config YAML; default: the config.yaml beside --weights.",
        )
        sub.add_argument(
            "--weights",
            metavar="FILE",
            help='Trained PixelCLIP checkpoint; default: the config\'s MODEL.WEIGHTS; "" = plain '
            "CLIP of MODEL.CLIP.PRETRAINED (e.g. the shipped toy-clip).",
        )
        sub.add_argument(
            "--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
            help="Config overrides as KEY VALUE pairs; must come last.",
        )  # fmt: skip
    graphs.add_argument("--output-dir", required=True, metavar="DIR", help="Folder (created).")
    graphs.add_argument(
        "--protocol",
        choices=("whole", "slide"),
        help="Test protocol in the graphs; default: MODEL.PIXELCLIP.TEST.PROTOCOL.",
    )
    graphs.add_argument(
        "--vocabulary",
        metavar="SPEC",
        help="Also write <output-dir>/text_embeddings.npy for this vocabulary (the syntax of "
        "demo/demo.py: commas separate classes, '|' synonyms; or a JSON file or dataset name).",
    )
    graphs.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17).")
    graphs.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="Largest |onnxruntime - PyTorch| score difference accepted (default: 1e-4).",
    )
    graphs.add_argument("--no-check", action="store_true", help="Skip the onnxruntime check.")
    text.add_argument("--vocabulary", required=True, metavar="SPEC", help="Classes, as above.")
    text.add_argument("--output", required=True, metavar="FILE.npy", help="Output .npy file.")
    return parser


def check_sizes(manifest: dict) -> list[tuple[int, int]]:
    """A square and a non-square size around the protocol's own scale."""
    side = (
        manifest["slide_crop"] if manifest["protocol"] == "slide" else manifest["clip_resolution"]
    )
    return [(side, side), (side * 3 // 4 + 1, side * 7 // 4 + 3)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if len(args.opts) % 2:
        print(f"error: config overrides must be KEY VALUE pairs, got {args.opts}", file=sys.stderr)
        return 2

    from pixelclip.inference import onnx_export

    opts = list(args.opts)
    if args.command == "graphs" and args.protocol:
        opts += ["MODEL.PIXELCLIP.TEST.PROTOCOL", args.protocol]
    try:
        model = onnx_export.load_model(args.config_file, args.weights, opts)
        if args.command == "text":
            onnx_export.write_text_embeddings(model, args.vocabulary, args.output)
            return 0
        manifest = onnx_export.export_onnx(
            model, args.output_dir, opset=args.opset, source=args.weights or ""
        )
        if args.vocabulary:
            path = Path(args.output_dir) / "text_embeddings.npy"
            onnx_export.write_text_embeddings(model, args.vocabulary, path)
    except ImportError as e:
        print(f"error: {e}; install the extra: pip install -e '.[onnx]'", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.no_check:
        return 0
    vocabulary = args.vocabulary or CHECK_VOCABULARY
    results = onnx_export.check_onnx_export(
        model, args.output_dir, check_sizes(manifest), [vocabulary]
    )
    worst = max(r["max_abs_diff"] for r in results)
    for r in results:
        logger.info(
            "check %dx%d, %d classes: max |onnxruntime - PyTorch| = %.3g",
            *r["size"], r["classes"], r["max_abs_diff"],
        )  # fmt: skip
    if worst > args.tolerance:
        logger.error("onnxruntime differs from PyTorch by %.3g > %.3g", worst, args.tolerance)
        return 1
    return 0


if __name__ == "__main__":
    from pixelclip.logs import setup_logging

    setup_logging(third_party_level=logging.WARNING)  # ours at INFO; third-party INFO is noise
    sys.exit(main())
