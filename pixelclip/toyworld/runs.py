"""The runs of the ToyWorld quickstart (:mod:`pixelclip.toyworld.quickstart`): configs, training
as ``tools/train_net.py`` does, reuse of trained runs, evaluation on dev and test, the ablations,
and the cluster analysis of a trained run (:mod:`pixelclip.analysis`)."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

__all__ = [
    "SPLITS", "Steps", "ablations", "analyze_clusters", "build_cfg", "evaluate_splits",
    "load_model", "runs_to_train", "same_config", "train", "train_overrides", "trained_before",
]  # fmt: skip

SPLITS = {"dev": "toyworld_dev_sem_seg", "test": "toyworld_test_sem_seg"}


def ablations() -> dict[str, tuple[str, list[str]]]:
    """The ablations of the README: name -> (row label, config overrides added to the run's)."""
    from .world import TOYWORLD_CLASSES

    names = "[" + ", ".join(repr(c) for c in TOYWORLD_CLASSES) + "]"
    return {
        "no-clustering": (
            "w/o semantic clustering (each mask its own target)",
            ["MODEL.PIXELCLIP.SEMANTIC_CLUSTERING", "False"],
        ),
        "no-teacher": (
            "w/o momentum teacher (momentum 0)",
            ["MODEL.PIXELCLIP.MOMENTUM", "0.0"],
        ),
        "frozen-prompts": ("frozen random prompts", ["MODEL.PROMPT.FROZEN", "True"]),
        "class-name-prompts": (
            f"fixed class-name prompts (k = {len(TOYWORLD_CLASSES)})",
            ["MODEL.PROMPT.CLASS_NAMES", names]
            + ["MODEL.PROMPT.NUM_CLUSTERS", str(len(TOYWORLD_CLASSES))],
        ),
        "k8": ("k = 8", ["MODEL.PROMPT.NUM_CLUSTERS", "8"]),
        "k16": ("k = 16", ["MODEL.PROMPT.NUM_CLUSTERS", "16"]),
        "k32": ("k = 32", ["MODEL.PROMPT.NUM_CLUSTERS", "32"]),
    }


class Steps:
    """Prints numbered steps with their durations."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.times: dict[str, float] = {}

    def run(self, title: str, fn, *a, **kw):
        print(f"\n==> {title}", flush=True)
        t = time.perf_counter()
        out = fn(*a, **kw)
        self.times[title] = round(time.perf_counter() - t, 1)
        print(f"<== {title}: {self.times[title]:.1f} s", flush=True)
        return out


def build_cfg(config_file: str, opts: list[str], output_dir: str):
    """The frozen config of a run, made as train_net makes it (relative paths made absolute), so
    that it compares equal to the config.yaml a training run saves."""
    from ..config import build_config

    cfg = build_config(config_file, [*opts, "OUTPUT_DIR", output_dir])
    cfg.freeze()
    return cfg


def load_model(cfg, weights: str = ""):
    """The model of ``cfg`` in eval mode (CLIP from MODEL.CLIP.PRETRAINED), then ``weights``."""
    from detectron2.modeling import build_model

    from ..checkpoint import load_weights

    model = build_model(cfg)
    if weights:
        load_weights(model, weights)
    return model.eval()


def evaluate_splits(cfg, model, output_dir: str) -> dict:
    """``{split: {"mIoU", "stuff", "things", "metrics"}}`` on dev and test."""
    from ..evaluation.evaluate import evaluate, subset_miou
    from .world import TOYWORLD_STUFF, TOYWORLD_THINGS

    results = evaluate(cfg, model, list(SPLITS.values()), output_dir=output_dir)
    out = {}
    for split, name in SPLITS.items():
        m = results[name]["metrics"]
        out[split] = {
            "mIoU": m["mIoU"],
            "stuff": subset_miou(m, TOYWORLD_STUFF),
            "things": subset_miou(m, TOYWORLD_THINGS),
            "entry": results[name],
        }
        print(
            f"    {split}: mIoU {m['mIoU']:.1f} (stuff {out[split]['stuff']:.1f}, "
            f"things {out[split]['things']:.1f})"
        )
    return out


def same_config(a, b) -> bool:
    """Whether two configs hold the same values (compared through their YAML dumps: a config read
    back from YAML has lists where a merged one may have tuples)."""
    import yaml

    return yaml.safe_load(a.dump()) == yaml.safe_load(b.dump())


def runs_to_train(args: argparse.Namespace, opts: list[str]) -> list[tuple[str, str, list[str]]]:
    """(name, row label, extra overrides) of the main run ("") and of each ablation; an ablation
    that leaves the config unchanged (e.g. k32 when the config has k = 32) is the main run and
    is skipped unless ``--skip-main``."""
    table = ablations()
    main_cfg = build_cfg(args.config_file, opts, "")
    out = [] if args.skip_main else [("", args.label, [])]
    for name in args.ablations:
        label, extra = table[name]
        config = build_cfg(args.config_file, opts + extra, "")
        if not args.skip_main and same_config(config, main_cfg):
            print(f"==> skipping ablation {name}: it is the config itself (the {args.label} rows)")
            continue
        out.append((name, label, extra))
    return out


def train_overrides(opts: list[str], output_dir: str, seed: int) -> list[str]:
    """The config overrides of one training run (train_net saves the result as config.yaml)."""
    return [*opts, "OUTPUT_DIR", output_dir, "SEED", str(seed),
            "DATASETS.TRAIN", '("toyworld_train",)', "DATASETS.TEST", "()"]  # fmt: skip


def trained_before(config_file: str, opts: list[str], output_dir: str, seed: int) -> str | None:
    """``output_dir``/model_final.pth if it exists and its config.yaml equals the config this run
    would train with; None otherwise (a mismatch is printed)."""
    weights, saved = Path(output_dir) / "model_final.pth", Path(output_dir) / "config.yaml"
    if not (weights.is_file() and saved.is_file()):
        return None
    wanted = build_cfg(config_file, train_overrides(opts, output_dir, seed), output_dir)
    if not same_config(build_cfg(str(saved), [], output_dir), wanted):
        print(f"not reusing {weights}: {saved} differs from this run's config")
        return None
    return str(weights)


def train(config_file: str, opts: list[str], output_dir: str, seed: int) -> str:
    """Train as tools/train_net.py does (in this process); returns the path of model_final.pth."""
    from ..engine import build_parser, train_net

    # --overwrite: a run is retrained when asked to (--reuse-trained keeps trained runs instead).
    argv = ["--config-file", config_file, "--overwrite", *train_overrides(opts, output_dir, seed)]
    # train_net's setup() adds log handlers to these loggers each time; restore them afterwards
    # so that several seeds do not print every line several times.
    names = ("detectron2", "pixelclip", "fvcore", "d2")
    saved = {n: list(logging.getLogger(n).handlers) for n in names}
    try:
        train_net(build_parser().parse_args(argv))
    finally:
        for n, handlers in saved.items():
            for h in logging.getLogger(n).handlers[:]:
                if h not in handlers:
                    logging.getLogger(n).removeHandler(h)
                    h.close()
    return os.path.join(output_dir, "model_final.pth")


def analyze_clusters(cfg, weights: str, output_dir) -> dict:
    """What the learned classes of a trained run became on the test split: the files of
    ``tools/analyze_clusters.py --dataset toyworld_test_sem_seg`` in ``output_dir``."""
    from ..analysis.run import analyze_checkpoint

    return analyze_checkpoint(cfg, weights, output_dir, dataset=SPLITS["test"])
