#!/usr/bin/env python
"""Export PixelCLIP's fine-tuned CLIP as an open_clip checkpoint, for use in other frameworks.

PixelCLIP fine-tunes CLIP's image encoder; its text encoder stays frozen. This tool writes a full
open_clip CLIP state dict (open_clip's key names): the fine-tuned student image tower (or, with
``--teacher``, the momentum teacher's) under ``visual.*``, the text tower, and ``logit_scale``.
open_clip loads the file directly::

    model = open_clip.create_model("ViT-B-16", pretrained="pixelclip_vitb16_clip.safetensors",
                                   force_quick_gelu=True)  # OpenAI-based ViTs use QuickGELU

``encode_image`` of that model is open_clip's ordinary global embedding with the fine-tuned
weights; the dense read-out PixelCLIP uses for segmentation is ``pixelclip.modeling.dense``.

The input is a checkpoint of this project (``output/model_final.pth``) or of the reference code
(converted on the fly); it is read without unpickling arbitrary objects. The output is a plain
state dict: ``.safetensors`` (recommended), or ``torch.save`` for any other suffix (open_clip
reads those with ``weights_only=True``). It is written atomically.

PixelCLIP does not keep CLIP's ``logit_scale`` (the softmax scale of zero-shot classification;
it never changes during PixelCLIP training). Its value is, in order of precedence:
``--logit-scale``; the one in ``--base-weights`` (the CLIP weights training started from); the
one stored in a reference checkpoint; else ln(100) = 4.6052, the value of OpenAI's CLIP, with a
warning.

With ``--model-name`` (plus ``--model-config`` for a custom model, ``--force-quick-gelu`` for
QuickGELU models) the written file is first loaded with open_clip's own ``load_checkpoint``
(strict) into that model, so a file that open_clip cannot load is never written.

Example::

    python tools/export_clip.py output/model_final.pth exported/pixelclip_vitb16.safetensors \\
        --model-name ViT-B-16 --force-quick-gelu --base-weights weights/ViT-B-16.pt
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

# Allow `python tools/export_clip.py` from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixelclip.checkpoint import (  # noqa: E402
    DEFAULT_LOGIT_SCALE,
    REF_CLIP,
    atomic_save,
    convert_reference_state_dict,
    is_reference_state_dict,
    read_checkpoint,
    to_open_clip_state_dict,
)

logger = logging.getLogger("export_clip")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoint",
        help="PixelCLIP checkpoint (this project's or the reference code's; .pth or .safetensors)",
    )
    parser.add_argument(
        "output", help="open_clip weight file to write (.safetensors, or .pt/.pth/.bin)"
    )
    parser.add_argument(
        "--teacher",
        action="store_true",
        help="export the momentum teacher's image tower instead of the student's",
    )
    parser.add_argument(
        "--logit-scale",
        type=float,
        default=None,
        metavar="X",
        help="open_clip logit_scale to store (natural log of the scale, e.g. 4.6052 = ln 100)",
    )
    parser.add_argument(
        "--base-weights",
        default="",
        metavar="FILE",
        help="open_clip weight file of the CLIP training started from: take logit_scale from it",
    )
    parser.add_argument(
        "--model-name",
        default="",
        metavar="NAME",
        help="open_clip model name: check that open_clip loads the file into this model",
    )
    parser.add_argument(
        "--model-config",
        default="",
        metavar="JSON",
        help="open_clip model-config JSON registering --model-name (custom models)",
    )
    parser.add_argument(
        "--force-quick-gelu",
        action="store_true",
        help="build the --model-name model with QuickGELU (OpenAI ViT weights)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT if it already exists"
    )
    return parser.parse_args(argv)


def resolve_logit_scale(args: argparse.Namespace, raw: dict) -> float:
    """The logit scale to store, by the precedence in the module docstring."""
    if args.logit_scale is not None:
        return args.logit_scale
    if args.base_weights:
        from pixelclip.modeling.clip import load_state_dict_file

        base = load_state_dict_file(args.base_weights)
        if "logit_scale" not in base:
            raise ValueError(f"{args.base_weights}: no 'logit_scale' in these CLIP weights")
        return float(base["logit_scale"])
    if REF_CLIP + "logit_scale" in raw:
        return float(raw[REF_CLIP + "logit_scale"])
    logger.warning(
        "logit_scale is not stored by PixelCLIP: using ln(100) = %.4f (OpenAI CLIP's value); "
        "pass --base-weights or --logit-scale to set it",
        DEFAULT_LOGIT_SCALE,
    )
    return DEFAULT_LOGIT_SCALE


def open_clip_verifier(model_name: str, model_config: str, force_quick_gelu: bool):
    """A function that loads a written file into a fresh open_clip model the way
    ``open_clip.create_model(model_name, pretrained=file)`` does (strict)."""
    import open_clip

    from pixelclip.modeling.clip import create_clip

    model = create_clip(model_name, model_config=model_config, force_quick_gelu=force_quick_gelu)

    def verify(path: str) -> None:
        try:
            open_clip.load_checkpoint(model, path, strict=True)
        except RuntimeError as e:  # load_state_dict's missing/unexpected/size-mismatch report
            raise ValueError(f"open_clip cannot load the export into {model_name!r}: {e}") from e

    return verify


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists (use --overwrite to replace it)", file=sys.stderr)
        return 1
    try:
        raw = read_checkpoint(args.checkpoint)["model"]
        sd = raw
        if is_reference_state_dict(raw):
            sd, report = convert_reference_state_dict(raw, source=args.checkpoint)
            report.log(args.checkpoint)
        exported = to_open_clip_state_dict(
            sd, teacher=args.teacher, logit_scale=resolve_logit_scale(args, raw)
        )
        verify = None
        if args.model_name:
            verify = open_clip_verifier(args.model_name, args.model_config, args.force_quick_gelu)
        atomic_save(out, exported, verify=verify)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    tower = "teacher" if args.teacher else "student"
    print(f"wrote {out}: {len(exported)} tensors ({tower} image tower, text tower, logit_scale)")
    name = args.model_name or "<model name>"
    quick = ", force_quick_gelu=True" if args.force_quick_gelu else ""
    print(f'load it with: open_clip.create_model("{name}", pretrained="{out}"{quick})')
    return 0


if __name__ == "__main__":
    sys.exit(main())
