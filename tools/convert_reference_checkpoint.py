#!/usr/bin/env python
"""Convert a checkpoint of the reference PixelCLIP code to this project's format.

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

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

# Allow `python tools/convert_reference_checkpoint.py` from a checkout without installing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixelclip.checkpoint import (  # noqa: E402
    atomic_save,
    check_state_dict_matches,
    convert_reference_state_dict,
    is_reference_state_dict,
    merge_config_file,
    read_checkpoint,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
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

    import pixelclip  # noqa: F401  (registers the meta-architecture)

    cfg = get_cfg()
    pixelclip.add_pixelclip_config(cfg)
    merge_config_file(cfg, config_file)
    cfg.MODEL.CLIP.PRETRAINED = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.MASK_SOURCE = "sa1b"  # the DINO mask model is not part of the checkpoint
    return build_model(cfg).state_dict()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists (use --overwrite to replace it)", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
