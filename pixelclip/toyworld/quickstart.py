"""ToyWorld quickstart (`make demo`): baseline CLIP vs. PixelCLIP on a synthetic world, on the CPU.

Steps (each printed with its duration):
  1. build (or reuse) a ToyWorld (pixelclip.toyworld.world) under ``--world-dir``: by default
     ``$DETECTRON2_DATASETS/toyworld`` (``datasets/toyworld``), the folder registered as
     ``toyworld_{train,dev_sem_seg,test_sem_seg}`` when pixelclip is imported, so that
     ``tools/train_net.py --config-file configs/toyworld/pixelclip_toyclip.yaml --eval-only
     MODEL.WEIGHTS <run>/model_final.pth`` evaluates a trained run again; with ``--quick``
     ``<output-dir>/world`` (a smaller world must not replace the default one);
  2. evaluate the small pretrained CLIP ("toy-clip") without PixelCLIP training: the baseline;
  3. train PixelCLIP as ``tools/train_net.py`` does (``pixelclip.engine.train_net``), with
     configs/toyworld/pixelclip_toyclip.yaml, once per seed, on the class-agnostic masks of the
     train split (no class labels);
  4. evaluate each trained model with the same evaluator (detectron2's SemSegEvaluator through
     pixelclip.evaluation.evaluate) on the dev and test splits;
  5. analyse what the learned classes of the main run's first seed became on the test split
     (``clusters/``: nearest names, matching to the classes, pictures; the files of
     ``tools/analyze_clusters.py``, pixelclip.analysis);
  6. write ``results.md`` / ``results.json`` (mIoU over all, stuff and thing classes; mean +- std
     over seeds), the per-run records ``runs/results.{md,json}``, ``grid.png`` (image | ground
     truth | baseline | PixelCLIP for a seeded random choice of test images) and
     ``iou_per_class.png`` (test IoU of every class, baseline vs. PixelCLIP's mean over seeds).

With ``--ablations`` the same seeds are also trained and evaluated with each ablation (a config
override, see ``ablations()``) and reported as further rows of the same table; an ablation that
leaves the config unchanged (k32 with the default k = 32) is not trained twice; ``--skip-main``
trains the ablations only. KEY VALUE overrides come last; after the names of ``--ablations``
separate them with ``--`` (``--ablations k8 -- SOLVER.MAX_ITER 300``).

Examples:
  tools/quickstart.py --output-dir output/quickstart
  tools/quickstart.py --output-dir output/qs3 --seeds 0 1 2
  tools/quickstart.py --output-dir output/ablations --seeds 0 1 2 --ablations all
  tools/quickstart.py --output-dir output/k8 --label "PixelCLIP k=8" MODEL.PROMPT.NUM_CLUSTERS 8
Trailing KEY VALUE pairs override keys of the config for baseline and training alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from ..cli_help import HelpFormatter
from .report import (
    chart_models,
    grid_sample,
    predict,
    summarise,
    to_markdown,
    write_grid,
    write_iou_chart,
)
from .runs import (  # noqa: F401 -- same_config, train_overrides: part of this module's API
    SPLITS,
    Steps,
    ablations,
    analyze_clusters,
    build_cfg,
    evaluate_splits,
    load_model,
    runs_to_train,
    same_config,
    train,
    train_overrides,
    trained_before,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "toyworld" / "pixelclip_toyclip.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=HelpFormatter,
    )
    ap.add_argument("--output-dir", default="output/quickstart", help="folder of all outputs")
    ap.add_argument("--world-dir", default="", help="ToyWorld folder (default: see step 1)")
    ap.add_argument("--config-file", default=str(DEFAULT_CONFIG), help="PixelCLIP config (YAML)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    ap.add_argument("--iters", type=int, default=0, help="training iterations (0 = the config's)")
    ap.add_argument("--num-train", type=int, default=2000, help="train images (masks only)")
    ap.add_argument("--num-dev", type=int, default=200, help="dev images (labelled)")
    ap.add_argument("--num-test", type=int, default=400, help="test images (labelled)")
    ap.add_argument("--world-seed", type=int, default=0, help="seed of the generated world")
    ap.add_argument("--grid-images", type=int, default=6, help="test images in grid.png (0: none)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 is robust on a "
        "shared machine; more threads thrash when other jobs hold the cores)",
    )
    ap.add_argument("--label", default="PixelCLIP", help="row label of the trained model")
    ap.add_argument("--skip-baseline", action="store_true", help="do not evaluate the baseline")
    ap.add_argument(
        "--ablations",
        nargs="+",
        default=[],
        metavar="NAME",
        help="also train these ablations (each with every seed): 'all' or names among "
        "no-clustering, no-teacher, frozen-prompts, class-name-prompts, k8, k16, k32",
    )
    ap.add_argument(
        "--skip-main", action="store_true", help="train only the ablations, not the config as is"
    )
    ap.add_argument(
        "--reuse-trained",
        action="store_true",
        help="do not train a run whose folder already holds model_final.pth trained with the "
        "same config (e.g. after an interrupted quickstart); evaluate it again",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 160 train / 40 dev / 40 test images, 100 iterations, 3 grid "
        "images (used by tests/test_quickstart.py)",
    )
    ap.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="KEY VALUE config overrides, e.g. MODEL.PROMPT.NUM_CLUSTERS 8",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.num_train, args.num_dev, args.num_test = 160, 40, 40
        args.iters, args.grid_images = args.iters or 100, min(args.grid_images, 3)
    if args.opts[:1] == ["--"]:  # "--ablations k8 -- KEY VALUE": the list ends at "--"
        args.opts = args.opts[1:]
    if any(o.startswith("--") for o in args.opts):
        ap.error(f"options must come before the KEY VALUE overrides, got {args.opts}")
    if len(args.opts) % 2:
        ap.error(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    known = list(ablations())
    if args.ablations == ["all"]:
        args.ablations = known
    unknown = [a for a in args.ablations if a not in known]
    if unknown:
        ap.error(f"unknown ablation(s) {unknown}; choose 'all' or from {known}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from detectron2.data import DatasetCatalog

    from ..evaluation.tables import make_run, write_results
    from ..logs import setup_logging
    from .datasets import default_toyworld_root, register_toyworld
    from .world import write_toyworld

    setup_logging(setup_report_on_console=False)  # the report stays in each run's log.txt
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = Path(args.world_dir or (out / "world" if args.quick else default_toyworld_root()))
    opts = list(args.opts) + (["SOLVER.MAX_ITER", str(args.iters)] if args.iters else [])
    steps = Steps()
    print(f"ToyWorld quickstart: outputs in {out}, {torch.get_num_threads()} torch thread(s)")

    def build_world():
        meta = write_toyworld(
            world,
            num_train=args.num_train,
            num_dev=args.num_dev,
            num_test=args.num_test,
            seed=args.world_seed,
        )
        register_toyworld(world)
        return meta

    steps.run(f"1. ToyWorld at {world}", build_world)
    # A fixed, seeded random choice of test images (neither hand-picked nor the first ones).
    grid_dicts = grid_sample(DatasetCatalog.get(SPLITS["test"]), args.grid_images, seed=0)
    runs, grid_columns, baseline = [], {}, None
    cfg = build_cfg(args.config_file, opts, str(out / "baseline"))
    command = " ".join([sys.executable, *sys.argv])
    if not args.skip_baseline:

        def run_baseline():
            model = load_model(cfg)
            res = evaluate_splits(cfg, model, str(out / "baseline"))
            grid_columns["baseline"] = predict(model, grid_dicts)
            return res

        baseline = steps.run("2. Baseline: toy-clip without training", run_baseline)
        runs.append(
            make_run(
                "toy-clip (baseline)",
                {SPLITS[s]: baseline[s]["entry"] for s in SPLITS},
                protocol=cfg.MODEL.PIXELCLIP.TEST.PROTOCOL,
                config=cfg.dump(),
                command=command,
            )
        )
    results = {}
    variants = runs_to_train(args, opts)
    for name, label, extra in variants:
        trained = results[label] = []
        for seed in args.seeds:
            folder = str(out / (f"{name}-seed{seed}" if name else f"seed{seed}"))
            weights = args.reuse_trained and trained_before(
                args.config_file, opts + extra, folder, seed
            )
            if weights:
                print(f"==> 3. Reusing {weights} (--reuse-trained)")
            else:
                weights = steps.run(
                    f"3. Train {label}, seed {seed}",
                    train,
                    args.config_file,
                    opts + extra,
                    folder,
                    seed,
                )
            cfg_s = build_cfg(args.config_file, opts + extra, folder)

            def run_eval(cfg_s=cfg_s, weights=weights, folder=folder, label=label, name=name):
                model = load_model(cfg_s, weights)
                res = evaluate_splits(cfg_s, model, folder)
                if label not in grid_columns and not name:  # the first seed of the main run
                    grid_columns[label] = predict(model, grid_dicts)
                return res

            res = steps.run(f"4. Evaluate {label}, seed {seed}", run_eval)
            if not name and seed == args.seeds[0]:  # what this run's learned classes became
                steps.run("5. Cluster analysis", analyze_clusters, cfg_s, weights, out / "clusters")
            trained.append(res)
            runs.append(
                make_run(
                    f"{label} (seed {seed})",
                    {SPLITS[s]: res[s]["entry"] for s in SPLITS},
                    protocol=cfg_s.MODEL.PIXELCLIP.TEST.PROTOCOL,
                    weights=weights,
                    config=cfg_s.dump(),
                    command=command,
                    seed=seed,
                )
            )

    table = summarise(baseline, results, args.seeds)
    notes = [
        f"mIoU (%) over the 14 ToyWorld classes; stuff = 6 background classes, things = 8 shapes; "
        f"dev {args.num_dev} / test {args.num_test} images, {args.num_train} train images "
        f"(class-agnostic masks only), world seed {args.world_seed}.",
        f"config {os.path.relpath(args.config_file, REPO)}"
        + (f" with overrides {' '.join(opts)}" if opts else "")
        + f"; seeds {args.seeds}.",
        f"command: {command}",
    ]
    if baseline is not None and not args.skip_main:
        main_runs = results[args.label]
        gain = statistics.fmean(r["test"]["mIoU"] for r in main_runs) - baseline["test"]["mIoU"]
        notes.insert(1, f"test mIoU gain of {args.label} over the baseline: {gain:+.1f}")
    steps.times["total"] = round(time.perf_counter() - steps.start, 1)
    notes.append("seconds per step: " + json.dumps(steps.times))
    markdown = to_markdown(table, notes)
    (out / "results.md").write_text(markdown, encoding="utf-8")
    summary = {"table": table, "notes": notes, "seconds": steps.times, "args": vars(args)}
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    write_results(runs, out / "runs")
    if grid_dicts and grid_columns:
        write_grid(out / "grid.png", grid_dicts, grid_columns)
    chart = chart_models(baseline, args.label, [] if args.skip_main else results[args.label])
    if chart:
        write_iou_chart(out / "iou_per_class.png", chart)
    print("\n" + markdown)
    print(
        f"Written: {out / 'results.md'}, {out / 'results.json'}, {out / 'runs'}"
        + (f", {out / 'grid.png'}" if grid_dicts and grid_columns else "")
        + (f", {out / 'iou_per_class.png'}" if chart else "")
    )
    return summary
