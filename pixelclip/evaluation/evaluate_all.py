"""Evaluate a PixelCLIP checkpoint, or plain CLIP as the baseline, on several benchmarks and write
the paper-style table (results.md) and the full record (results.json) into --output.

Examples:
  tools/evaluate_all.py --config-file configs/pixelclip_vitb16_sa1b_bs48_10k.yaml --baseline
  tools/evaluate_all.py --config-file configs/pixelclip_vitb16_sa1b_bs48_10k.yaml \\
      --weights output/vitb16_sa1b/model_final.pth --append --num-gpus 4
  tools/evaluate_all.py --config-file configs/pixelclip_vitb16_sa1b_bs48_10k.yaml --baseline \\
      --benchmarks ade-150 voc-20 --protocol slide --max-images 20 --output output/quick

Benchmark aliases (or pass any registered sem-seg dataset name):
{aliases}

Test-time resize (shortest edge, longest-edge cap; scores are computed at the original size):
  whole  INPUT.MIN_SIZE_TEST / INPUT.MAX_SIZE_TEST of the config (640 / 2560 in the reference)
  slide  {slide} for every benchmark except {slide_special}; windows of
         MODEL.PIXELCLIP.TEST.SLIDE_CROP with stride SLIDE_STRIDE (224 / 112 by default)
  --test-size N replaces the shortest edge for every benchmark.

A benchmark whose folder is missing is reported (the message names the expected folder and the
datasets/prepare_*.py script), marked "missing" in the table, and the others still run; the exit
status is then 1 unless --allow-missing. --append adds this run to an existing results.json: a
model's row shows its latest result per benchmark. On a machine without CUDA, the model runs on
the CPU and --num-gpus N starts N CPU processes (gloo).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import launch
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..checkpoint import load_weights, merge_config_file
from ..cli_help import HelpFormatter
from ..config import add_pixelclip_config
from ..config_checks import validate_config
from ..engine import Trainer
from . import tables
from .evaluate import SLIDE_TEST_SIZE, SLIDE_TEST_SIZE_BY_DATASET, evaluate, find_missing_datasets

logger = logging.getLogger(__name__)


def _epilog() -> str:
    aliases = "\n".join(
        f"  {alias:<11} {name}" + ("  (paper)" if name in tables.PAPER_BENCHMARKS else "")
        for alias, name in tables.BENCHMARK_ALIASES.items()
    )
    special = ", ".join(f"{name} {size}" for name, size in SLIDE_TEST_SIZE_BY_DATASET.items())
    return __doc__.split("\n\n", 1)[1].format(
        aliases=aliases, slide=SLIDE_TEST_SIZE, slide_special=special
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/evaluate_all.py",
        description=__doc__.split("\n\n", 1)[0],
        epilog=_epilog(),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config YAML")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--weights", metavar="FILE", help="PixelCLIP checkpoint to evaluate")
    model.add_argument(
        "--baseline",
        action="store_true",
        help="plain CLIP without PixelCLIP training: the config's MODEL.CLIP.PRETRAINED weights, "
        "MODEL.WEIGHTS ignored",
    )
    parser.add_argument("--name", default="", help="row label (default: from the model/weights)")
    parser.add_argument(
        "--benchmarks",
        nargs="+",
        default=list(tables.PAPER_BENCHMARKS),
        metavar="NAME",
        help="benchmarks (aliases below or dataset names; default: the paper's five)",
    )
    parser.add_argument(
        "--protocol",
        choices=["whole", "slide"],
        default=None,
        help="inference protocol (sets MODEL.PIXELCLIP.TEST.PROTOCOL; default: the config's)",
    )
    parser.add_argument(
        "--test-size",
        type=int,
        default=None,
        metavar="N",
        help="shortest test edge for every benchmark, 0 = no resize (default: see below)",
    )
    parser.add_argument(
        "--max-images",
        type=int,
        default=None,
        metavar="N",
        help="evaluate only the first N images of each benchmark (quick check; the table marks "
        "it as a subset)",
    )
    parser.add_argument(
        "--output",
        default="output/evaluation",
        metavar="DIR",
        help="folder for results.json, results.md, log and evaluator files (default: %(default)s)",
    )
    parser.add_argument(
        "--append", action="store_true", help="merge into an existing DIR/results.json"
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="exit status 0 even if some benchmarks are missing",
    )
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine")
    parser.add_argument("--num-machines", type=int, default=1, help="number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine")
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="initialization URL of torch.distributed (default: a free local port)",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config overrides, e.g. DATALOADER.NUM_WORKERS 2",
    )
    return parser


def resolve_benchmarks(names: list[str]) -> list[str]:
    """Dataset names of aliases/names, in order, without duplicates.

    Raises:
        ValueError: a name that is neither an alias nor a registered dataset.
    """
    registered = set(DatasetCatalog.list())
    resolved: list[str] = []
    for raw in names:
        name = tables.resolve_benchmark(raw)
        if name not in registered:
            raise ValueError(
                f"unknown benchmark {raw!r}; choose an alias from "
                f"{sorted(tables.BENCHMARK_ALIASES)} or a registered dataset name"
            )
        if name not in resolved:
            resolved.append(name)
    return resolved


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """The frozen config: file, KEY VALUE overrides, then the options of this tool."""
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    merge_config_file(cfg, args.config_file)
    cfg.merge_from_list(args.opts)
    if args.protocol:
        cfg.MODEL.PIXELCLIP.TEST.PROTOCOL = args.protocol
    cfg.MODEL.WEIGHTS = args.weights or ""
    cfg.OUTPUT_DIR = args.output
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE %s: CUDA is not available, using the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    validate_config(cfg, training=False, datasets=False)  # missing benchmarks are reported
    return cfg


def run_worker(args: argparse.Namespace, command: str) -> dict | None:
    """Build, load and evaluate the model in this process; the main process writes the results
    and returns its run record (other processes return None)."""
    if not logging.getLogger("pixelclip").isEnabledFor(logging.INFO):
        for name in ("detectron2", "pixelclip"):
            setup_logger(output=args.output, distributed_rank=comm.get_rank(), name=name)
    cfg = setup_cfg(args)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + comm.get_rank())
    if args.baseline and not cfg.MODEL.CLIP.PRETRAINED:
        logger.warning("--baseline with MODEL.CLIP.PRETRAINED '': CLIP has random weights")
    model = None
    if len(find_missing_datasets(args.benchmarks)) < len(args.benchmarks):
        model = Trainer.build_model(cfg)
        if args.weights:
            load_weights(
                model, args.weights, allow_partial=cfg.MODEL.PIXELCLIP.ALLOW_PARTIAL_WEIGHTS
            )
    results = evaluate(
        cfg,
        model,
        args.benchmarks,
        max_images=args.max_images,
        test_size=args.test_size,
        output_dir=args.output,
    )
    if not comm.is_main_process():
        return None
    run = tables.make_run(
        args.name or tables.model_label(cfg.MODEL.CLIP.MODEL_NAME, args.weights or ""),
        results,
        protocol=cfg.MODEL.PIXELCLIP.TEST.PROTOCOL,
        weights=args.weights or "",
        config=cfg.dump(),
        command=command,
        max_images=args.max_images,
        num_processes=comm.get_world_size(),
    )
    json_path = Path(args.output) / "results.json"
    runs = tables.merge(json_path, [run]) if args.append and json_path.is_file() else [run]
    tables.write_results(runs, args.output)
    logger.info("Wrote %s and results.md", json_path)
    return run


def main(argv: list[str] | None = None) -> int:
    """Run the tool; returns the exit status (0 ok, 1 some benchmark missing)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        parser.error(f"--max-images must be >= 1, got {args.max_images}")
    if args.test_size is not None and args.test_size < 0:
        parser.error(f"--test-size must be >= 0, got {args.test_size}")
    if not Path(args.config_file).is_file():
        parser.error(f"--config-file: no file {args.config_file}")
    if args.weights and not Path(args.weights).is_file():
        parser.error(f"--weights: no checkpoint file {args.weights}")
    try:
        args.benchmarks = resolve_benchmarks(args.benchmarks)
    except ValueError as e:
        parser.error(str(e))
    json_path = Path(args.output) / "results.json"
    if args.append and json_path.is_file():
        try:
            tables.load_runs(json_path)  # fail now, not after the evaluation
        except ValueError as e:
            parser.error(f"--append: {e}")

    command = shlex.join(["tools/evaluate_all.py", *argv])
    if args.num_gpus * args.num_machines == 1:
        run = run_worker(args, command)
    else:
        launch(
            run_worker,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args, command),
        )
        if args.machine_rank != 0:
            return 0
        run = tables.load_runs(json_path)[-1]  # written by the main process, last

    print(tables.to_markdown(tables.load_runs(json_path)))
    missing = {n: e for n, e in run["benchmarks"].items() if e["status"] != "ok"}
    for name, entry in missing.items():
        print(f"benchmark {name} is missing: {entry['error']}", file=sys.stderr)
    return 1 if missing and not args.allow_missing else 0
