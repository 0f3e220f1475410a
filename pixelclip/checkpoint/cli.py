"""The command-line front ends of ``tools/export_clip.py`` and
``tools/convert_reference_checkpoint.py``: argument parsing, messages and exit codes around
:mod:`.open_clip_export` and :mod:`.reference` (every file is read by :mod:`.safe_io`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..cli_help import HelpFormatter
from .open_clip_export import open_clip_verifier, resolve_logit_scale, to_open_clip_state_dict
from .reference import (
    check_state_dict_matches,
    convert_reference_state_dict,
    is_reference_state_dict,
)
from .safe_io import atomic_save, merge_config_file, read_checkpoint

__all__ = ["convert_reference_main", "export_clip_main", "model_state_dict"]

EXPORT_CLIP_HELP = """\
Export PixelCLIP's fine-tuned CLIP as an open_clip checkpoint, for use in other frameworks.

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

CONVERT_REFERENCE_HELP = """\
Convert a checkpoint of the reference PixelCLIP code to this project's format.

The authors publish trained weights (Hugging Face ``hsshin98/PixelCLIP``:
``pixelclip_vit_base.pth``, ``pixelclip_vit_base_dino.pth``, ``pixelclip_convnext_base.pth``,
``pixelclip_convnext_base_dino.pth``) in the layout of their own model. This tool maps the
student image tower, the text tower, the learnable prompts, the decoder and the momentum teacher
to our names, drops CLIP's unused logit scale and the teacher's text-side leftovers, and prints
every key it drops or cannot map. Without a teacher in the input, the teacher is a copy of the
student. The reference's optimizer and scheduler state is not carried over (it follows the
reference's parameter order); ``iteration`` is kept.

The input is read without unpickling arbitrary objects (``torch.load(weights_only=True)`` or
safetensors); the output is written atomically: ``{"model": state_dict}`` with ``torch.save``,
or a bare state dict if OUT ends in ``.safetensors``.

Converting is optional: ``MODEL.WEIGHTS`` accepts the reference file directly (it is converted on
load). With ``--config-file`` the result is also checked key by key against the model that config
builds (pre-trained CLIP weights are not loaded for that; nothing downloads).

Exit code: 0 on success; 1 if the input cannot be read, is incomplete, does not match the
config, or (with ``--strict``) has unmapped keys.

Example::

    python tools/convert_reference_checkpoint.py weights/pixelclip_vit_base.pth \\
        weights/pixelclip_vit_base_ours.pth --config-file configs/reference/pixelclip_vit_base.yaml
"""


def _refuses_to_replace(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` exists and may not be replaced (the message is printed)."""
    if out.exists() and not overwrite:
        print(f"error: {out} exists (use --overwrite to replace it)", file=sys.stderr)
        return True
    return False


# ------------------------------------------------------------------------------ export_clip
def parse_export_clip_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=EXPORT_CLIP_HELP.split("\n\n")[0],
        epilog=EXPORT_CLIP_HELP.split("\n\n", 1)[1],
        formatter_class=HelpFormatter,
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


def export_clip_main(argv: Sequence[str] | None = None) -> int:
    """``tools/export_clip.py``; returns the exit code (1: refused, unreadable or unloadable)."""
    args = parse_export_clip_args(argv)
    out = Path(args.output)
    if _refuses_to_replace(out, args.overwrite):
        return 1
    try:
        raw = read_checkpoint(args.checkpoint)["model"]
        sd = raw
        if is_reference_state_dict(raw):
            sd, report = convert_reference_state_dict(raw, source=args.checkpoint)
            report.log(args.checkpoint)
        exported = to_open_clip_state_dict(
            sd,
            teacher=args.teacher,
            logit_scale=resolve_logit_scale(raw, args.logit_scale, args.base_weights),
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


# ----------------------------------------------------------------- convert_reference_checkpoint
def parse_convert_reference_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=CONVERT_REFERENCE_HELP.split("\n\n")[0],
        epilog=CONVERT_REFERENCE_HELP.split("\n\n", 1)[1],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("input", metavar="IN", help="reference checkpoint (.pth or .safetensors)")
    parser.add_argument(
        "output",
        metavar="OUT",
        help="where to write the converted checkpoint (.pth: {'model': sd}; .safetensors: sd)",
    )
    parser.add_argument(
        "--config-file",
        default="",
        metavar="FILE",
        help="a PixelCLIP config (e.g. configs/reference/pixelclip_vit_base.yaml): check the "
        "converted keys and shapes against the model it builds",
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail if any input key could not be mapped"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it already exists")
    return parser.parse_args(argv)


def model_state_dict(config_file: str) -> dict:
    """State dict of the model a config builds, with random CLIP weights (nothing downloads)."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from ..config import add_pixelclip_config

    cfg = get_cfg()
    add_pixelclip_config(cfg)
    merge_config_file(cfg, config_file)
    cfg.MODEL.CLIP.PRETRAINED = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.MASK_SOURCE = "sa1b"  # the DINO mask model is not part of the checkpoint
    return build_model(cfg).state_dict()


def convert_reference_main(argv: Sequence[str] | None = None) -> int:
    """``tools/convert_reference_checkpoint.py``; returns the exit code (see its help)."""
    args = parse_convert_reference_args(argv)
    out = Path(args.output)
    if _refuses_to_replace(out, args.overwrite):
        return 1
    try:
        data = read_checkpoint(args.input)
        if not is_reference_state_dict(data["model"]):
            raise ValueError(
                f"{args.input}: not in the reference PixelCLIP layout (no key starts with "
                "'sem_seg_head.predictor.' or 'teacher_encoder.'); if it is already in this "
                "project's format, use it as MODEL.WEIGHTS directly"
            )
        ours, report = convert_reference_state_dict(data["model"], source=args.input)
        if args.config_file:
            check_state_dict_matches(ours, model_state_dict(args.config_file), args.input)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.input}: {report.summary()}")
    for key in report.unmapped:
        print(f"unmapped: {key}")
    if report.unmapped and args.strict:
        print(f"error: {len(report.unmapped)} unmapped keys (--strict)", file=sys.stderr)
        return 1
    if out.suffix == ".safetensors":
        atomic_save(out, ours)
    else:
        extra = {"iteration": data["iteration"]} if isinstance(data.get("iteration"), int) else {}
        atomic_save(out, {"model": ours, **extra})
    print(f"wrote {out} ({len(ours)} tensors)")
    return 0
