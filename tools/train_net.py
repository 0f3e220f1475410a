#!/usr/bin/env python3
"""Train or evaluate PixelCLIP with detectron2.

Examples:
  tools/train_net.py --config-file configs/pixelclip_vitb16_sa1b_bs48_10k.yaml --num-gpus 8
  tools/train_net.py --config-file configs/pixelclip_vitb16_sa1b_bs48_10k.yaml --resume
  tools/train_net.py --config-file configs/pixelclip_vitb16_sa1b_bs48_10k.yaml --eval-only \
      MODEL.WEIGHTS output/model_final.pth
Trailing KEY VALUE pairs override config keys. On a machine without CUDA, --num-gpus N starts N
CPU processes that train with gloo. Training into an OUTPUT_DIR that already holds checkpoints
needs --resume (continue) or --overwrite (start again).
"""

from pixelclip.engine import build_parser as _build_parser
from pixelclip.engine import train_net as main


def build_parser():
    """detectron2's argument parser plus ``--overwrite``."""
    return _build_parser(epilog=__doc__)


if __name__ == "__main__":
    # Imported after pixelclip, which silences detectron2's import-time FutureWarnings.
    from detectron2.engine import launch

    args = build_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
