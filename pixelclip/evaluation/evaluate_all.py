"""Evaluate a PixelCLIP checkpoint, or plain CLIP as the baseline, on several benchmarks and write
the paper-style table (results.md) and the full record (results.json) into --output.

Examples:
  tools/evaluate_all.py --config-file configs/pixelclip_vitb16_sa1b_bs48_10k.yaml --baseline
  tools/evaluate_all.py --config-file configs/pixelclip_vitb16_sa1b_bs48_10k.yaml \\
      --preset training-free --weights output/vitb16_sa1b/model_final.pth --baseline \\
      --dense-variants naclip sclip --output output/training_free
  tools/evaluate_all.py --config-file configs/pixelclip_vitb16_sa1b_bs48_10k.yaml \\
      --weights output/vitb16_sa1b/model_final.pth --append --num-gpus 4
  tools/evaluate_all.py --config-file configs/pixelclip_vitb16_sa1b_bs48_10k.yaml --baseline \\
      --benchmarks ade-150 voc-20 --protocol slide --max-images 20 --output output/quick

Benchmark aliases (or pass any registered sem-seg dataset name):
{aliases}

Presets (--preset; each only sets defaults, the options and KEY VALUE pairs given here win):
{presets}

Test-time resize (shortest edge, longest-edge cap; scores are computed at the original size):
  whole  INPUT.MIN_SIZE_TEST / INPUT.MAX_SIZE_TEST of the config (640 / 2560 in the reference)
  slide  {slide} for every benchmark except {slide_special}; windows of
         MODEL.PIXELCLIP.TEST.SLIDE_CROP with stride SLIDE_STRIDE (224 / 112 by default)
  --test-size N replaces the shortest edge for every benchmark (the training-free preset sets
  its own per benchmark).

A benchmark whose folder is missing is reported (the message names the expected folder and the
datasets/prepare_*.py script), marked "missing" in the table, and the others still run; the exit
status is then 1 unless --allow-missing. --append adds this run to an existing results.json: a
model's row shows its latest result per benchmark. --weights, --baseline and --dense-variants
combine: one row per model family, all on the same preset. On a machine without CUDA, the model
runs on the CPU and --num-gpus N starts N CPU processes (gloo).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import textwrap
from pathlib import Path

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import launch
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ..checkpoint import load_weights, merge_config_file
from ..cli_help import HelpFormatter
from ..config import add_pixelclip_config
from ..config_checks import validate_config
from ..engine import Trainer
from ..inference.readout import readout_settings
from ..logs import setup_logging
from ..modeling.dense import DENSE_VARIANTS
from . import tables
from .evaluate import SLIDE_TEST_SIZE, SLIDE_TEST_SIZE_BY_DATASET, evaluate, find_missing_datasets
from .presets import PRESETS, apply_preset, explicit_keys, get_preset, resolve_benchmark_names

logger = logging.getLogger(__name__)

# MODEL.PIXELCLIP.TEST.PAMR_STEPS of --pamr on (NACLIP's eval.py --pamr on: pamr_steps 10).
PAMR_ON_STEPS = 10


def _epilog() -> str:
    aliases = "\n".join(
        f"  {alias:<11} {name}" + ("  (paper)" if name in tables.PAPER_BENCHMARKS else "")
        for alias, name in tables.BENCHMARK_ALIASES.items()
    )
    special = ", ".join(f"{name} {size}" for name, size in SLIDE_TEST_SIZE_BY_DATASET.items())
    preset_lines = "\n".join(
        textwrap.fill(
            f"{p.name:<14} {len(p.benchmarks)} benchmarks; {p.summary}",
            width=98,
            initial_indent="  ",
            subsequent_indent=" " * 17,
        )
        for p in PRESETS.values()
    )
    return __doc__.split("\n\n", 1)[1].format(
        aliases=aliases, slide=SLIDE_TEST_SIZE, slide_special=special, presets=preset_lines
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/evaluate_all.py",
        description=__doc__.split("\n\n", 1)[0],
        epilog=_epilog(),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config YAML")
    parser.add_argument("--weights", metavar="FILE", help="PixelCLIP checkpoint to evaluate")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also plain CLIP without PixelCLIP training: the config's MODEL.CLIP.PRETRAINED "
        "weights, MODEL.WEIGHTS ignored",
    )
    parser.add_argument(
        "--dense-variants",
        nargs="+",
        default=[],
        choices=list(DENSE_VARIANTS),
        metavar="VARIANT",
        help=f"also plain CLIP with each of these dense readouts (MODEL.CLIP.DENSE_VARIANT; "
        f"{', '.join(DENSE_VARIANTS)})",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="paper",
        help="evaluation protocol preset (see below)",
    )
    parser.add_argument(
        "--pamr",
        choices=["on", "off"],
        default=None,
        help="PAMR refinement (on = MODEL.PIXELCLIP.TEST.PAMR_STEPS 10; default: the preset's, "
        "off)",
    )
    parser.add_argument(
        "--name", default="", help="row label of a single model (default: from the model/weights)"
    )
    parser.add_argument(
        "--benchmarks",
        nargs="+",
        default=None,
        metavar="NAME",
        help="benchmarks (aliases below or dataset names; 'large' = the preset's plus "
        "context-459 and ade-847; default: the preset's)",
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


def resolve_benchmarks(names: list[str] | None, preset: str = "paper") -> list[str]:
    """Dataset names of aliases/names, in order, without duplicates; None or [] = the preset's
    benchmarks, "large" = the preset's plus Context-459 and ADE-847.

    Raises:
        ValueError: a name that is neither an alias nor a registered dataset.
    """
    registered = set(DatasetCatalog.list())
    resolved: list[str] = []
    for raw in resolve_benchmark_names(names, get_preset(preset)):
        name = tables.resolve_benchmark(raw)
        if name not in registered:
            raise ValueError(
                f"unknown benchmark {raw!r}; choose an alias from "
                f"{sorted(tables.BENCHMARK_ALIASES)}, 'large', or a registered dataset name"
            )
        if name not in resolved:
            resolved.append(name)
    return resolved


def model_families(args: argparse.Namespace) -> list[dict]:
    """The models of one command, in row order: ours (--weights), plain CLIP (--baseline), plain
    CLIP with each of --dense-variants. Each: ``{"weights", "dense_variant"}`` (None = the
    config's readout)."""
    families = []
    if args.weights:
        families.append({"weights": args.weights, "dense_variant": None})
    if args.baseline:
        families.append({"weights": "", "dense_variant": None})
    families += [{"weights": "", "dense_variant": v} for v in args.dense_variants]
    return families


def explicit_config_keys(args: argparse.Namespace) -> set[str]:
    """Config keys the command line sets (KEY VALUE pairs and this tool's options): they win over
    the preset's defaults, also over its per-benchmark values."""
    keys = explicit_keys(args.opts)
    if args.protocol:
        keys.add("MODEL.PIXELCLIP.TEST.PROTOCOL")
    if args.pamr:
        keys.add("MODEL.PIXELCLIP.TEST.PAMR_STEPS")
    return keys


def setup_cfg(args: argparse.Namespace, family: dict | None = None) -> CfgNode:
    """The frozen config: file, the preset's defaults, KEY VALUE overrides, then the options of
    this tool (``family``: one of :func:`model_families`; None = the first). Options missing
    from ``args`` take the parser's defaults."""
    defaults = {a.dest: a.default for a in build_parser()._actions if a.dest != "help"}
    args = argparse.Namespace(**{**defaults, **vars(args)})
    args.opts = list(args.opts or [])
    family = family or (model_families(args) or [{"weights": "", "dense_variant": None}])[0]
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    merge_config_file(cfg, args.config_file)
    apply_preset(cfg, get_preset(args.preset), explicit_config_keys(args))
    cfg.merge_from_list(args.opts)
    if args.protocol:
        cfg.MODEL.PIXELCLIP.TEST.PROTOCOL = args.protocol
    if args.pamr:
        cfg.MODEL.PIXELCLIP.TEST.PAMR_STEPS = PAMR_ON_STEPS if args.pamr == "on" else 0
    if family["dense_variant"]:
        cfg.MODEL.CLIP.DENSE_VARIANT = family["dense_variant"]
    cfg.MODEL.WEIGHTS = family["weights"]
    cfg.OUTPUT_DIR = args.output
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE %s: CUDA is not available, using the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    validate_config(cfg, training=False, datasets=False)  # missing benchmarks are reported
    readout_settings(cfg)  # a bad readout key fails now, naming the key
    return cfg


def _label(args: argparse.Namespace, cfg: CfgNode, family: dict) -> str:
    if args.name:
        return args.name
    label = tables.model_label(cfg.MODEL.CLIP.MODEL_NAME, family["weights"])
    if family["dense_variant"]:
        label = label.replace("(baseline)", f"+ {family['dense_variant']} readout")
    return label


def run_worker(args: argparse.Namespace, command: str) -> list[dict] | None:
    """Build, load and evaluate each model family in this process; the main process writes the
    results and returns its run records (other processes return None)."""
    setup_logging(output=args.output, rank=comm.get_rank())
    runs = []
    json_path = Path(args.output) / "results.json"
    earlier = tables.load_runs(json_path) if args.append and json_path.is_file() else []
    for family in model_families(args):
        cfg = setup_cfg(args, family)
        seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + comm.get_rank())
        if family["dense_variant"] and "convnext" in cfg.MODEL.CLIP.MODEL_NAME.lower():
            logger.warning(
                "--dense-variants %s: MODEL.CLIP.DENSE_VARIANT changes ViT towers only; %s reads "
                "out as before",
                family["dense_variant"],
                cfg.MODEL.CLIP.MODEL_NAME,
            )
        if not family["weights"] and not cfg.MODEL.CLIP.PRETRAINED:
            logger.warning("plain CLIP with MODEL.CLIP.PRETRAINED '': CLIP has random weights")
        model = None
        if len(find_missing_datasets(args.benchmarks)) < len(args.benchmarks):
            model = Trainer.build_model(cfg)
            if family["weights"]:
                load_weights(
                    model,
                    family["weights"],
                    allow_partial=cfg.MODEL.PIXELCLIP.ALLOW_PARTIAL_WEIGHTS,
                )
        results = evaluate(
            cfg,
            model,
            args.benchmarks,
            max_images=args.max_images,
            test_size=args.test_size,
            output_dir=args.output,
            preset=args.preset,
            explicit=explicit_config_keys(args),
        )
        del model
        if not comm.is_main_process():
            continue
        runs.append(
            tables.make_run(
                _label(args, cfg, family),
                results,
                protocol=cfg.MODEL.PIXELCLIP.TEST.PROTOCOL,
                preset=args.preset,
                weights=family["weights"],
                dense_variant=str(cfg.MODEL.CLIP.DENSE_VARIANT),
                config=cfg.dump(),
                command=command,
                max_images=args.max_images,
                num_processes=comm.get_world_size(),
            )
        )
        # Written after every model: a long sweep keeps what it has measured.
        tables.write_results(tables.merge(earlier, runs) if earlier else runs, args.output)
        logger.info("Wrote %s and results.md", json_path)
    return runs if comm.is_main_process() else None


def evaluate_and_record(
    cfg: CfgNode, model: torch.nn.Module, preset: str, opts: list[str] = ()
) -> dict[str, dict]:
    """``tools/train_net.py --eval-only --preset P``: evaluate ``cfg.DATASETS.TEST`` with the
    preset (``opts``: the command line's KEY VALUE pairs, which win over its per-benchmark
    values) and write results.json / results.md into ``cfg.OUTPUT_DIR``.

    Returns:
        ``{dataset: {"sem_seg": metrics}}`` as ``Trainer.test`` does (empty on other ranks).
    """
    results = evaluate(
        cfg,
        model,
        list(cfg.DATASETS.TEST),
        output_dir=cfg.OUTPUT_DIR,
        preset=preset,
        explicit=explicit_keys(list(opts)),
    )
    if not comm.is_main_process():
        return {}
    run = tables.make_run(
        tables.model_label(cfg.MODEL.CLIP.MODEL_NAME, cfg.MODEL.WEIGHTS),
        results,
        protocol=cfg.MODEL.PIXELCLIP.TEST.PROTOCOL,
        preset=preset,
        weights=cfg.MODEL.WEIGHTS,
        dense_variant=str(cfg.MODEL.CLIP.DENSE_VARIANT),
        config=cfg.dump(),
        command=shlex.join(["tools/train_net.py", *sys.argv[1:]]),
        max_images=None,
        num_processes=comm.get_world_size(),
    )
    json_path, md_path = tables.write_results([run], cfg.OUTPUT_DIR)
    logger.info("Wrote %s and %s", json_path, md_path)
    return {name: {"sem_seg": entry["metrics"]} for name, entry in results.items()}


def main(argv: list[str] | None = None) -> int:
    """Run the tool; returns the exit status (0 ok, 1 some benchmark missing)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.weights or args.baseline or args.dense_variants):
        parser.error("give at least one model: --weights FILE, --baseline or --dense-variants")
    if args.name and len(model_families(args)) > 1:
        parser.error("--name labels a single model; with several, the rows are labelled by kind")
    if args.max_images is not None and args.max_images < 1:
        parser.error(f"--max-images must be >= 1, got {args.max_images}")
    if args.test_size is not None and args.test_size < 0:
        parser.error(f"--test-size must be >= 0, got {args.test_size}")
    if not Path(args.config_file).is_file():
        parser.error(f"--config-file: no file {args.config_file}")
    if args.weights and not Path(args.weights).is_file():
        parser.error(f"--weights: no checkpoint file {args.weights}")
    try:
        explicit_keys(args.opts)
        args.benchmarks = resolve_benchmarks(args.benchmarks, args.preset)
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
        runs = run_worker(args, command)
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
        # Written by the main process, last.
        runs = tables.load_runs(json_path)[-len(model_families(args)) :]

    print(tables.to_markdown(tables.load_runs(json_path)))
    status = 0
    for run in runs:
        missing = {n: e for n, e in run["benchmarks"].items() if e["status"] != "ok"}
        for name, entry in missing.items():
            print(f"{run['model']}: benchmark {name} is missing: {entry['error']}", file=sys.stderr)
        status = 1 if missing and not args.allow_missing else status
    return status
