"""Checks of the config keys PixelCLIP relies on, run before any long work.

The model's own keys (k, prompt length, resolutions, policies...) are checked where the model is
built; this module checks what is read later, so that a bad value fails at start-up, naming the
key, instead of after hours of training: the solver, the input sizes and augmentation
probabilities, the pixel normalisation, and the test datasets and vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["validate_config"]


class _Checker:
    def __init__(self, cfg: CfgNode) -> None:
        self.cfg = cfg
        self.errors: list[str] = []

    def get(self, key: str):
        node = self.cfg
        for part in key.split("."):
            node = node[part]
        return node

    def number(self, key: str, *, low=None, high=None, low_open=False, integer=False) -> None:
        value = self.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (not integer or float(value).is_integer())
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value <= high
        if not ok:
            kind = "an integer" if integer else "a number"
            lower = "" if low is None else f" {'>' if low_open else '>='} {low}"
            upper = "" if high is None else f" and <= {high}"
            self.errors.append(f"{key} = {value!r}: expected {kind}{lower}{upper}")

    def numbers(self, key: str, *, length=None, **bounds) -> None:
        values = self.get(key)
        if not isinstance(values, Sequence) or isinstance(values, str) or not values:
            self.errors.append(f"{key} = {values!r}: expected a non-empty list of numbers")
            return
        if length is not None and len(values) != length:
            self.errors.append(f"{key} = {values!r}: expected {length} values")
            return
        for i, _ in enumerate(values):
            before = len(self.errors)
            self.number_at(key, i, **bounds)
            if len(self.errors) > before:
                return

    def number_at(self, key: str, index: int, **bounds) -> None:
        sub = _Checker(CfgNode({"V": self.get(key)[index]}))
        sub.number("V", **bounds)
        self.errors += [e.replace("V = ", f"{key}[{index}] = ", 1) for e in sub.errors]

    def ordered(self, key: str) -> None:
        values = self.get(key)
        if len(values) == 2 and values[0] > values[1]:
            self.errors.append(f"{key} = {list(values)!r}: expected [min, max] with min <= max")


def validate_config(cfg: CfgNode, *, training: bool, datasets: bool = True) -> None:
    """Check the keys PixelCLIP reads after start-up; all problems are reported at once.

    Args:
        cfg: the merged config.
        training: also check the solver, training input and augmentation keys.
        datasets: also check that every ``DATASETS.TEST`` entry is registered and prepared, and
            that a fixed test vocabulary has as many classes as each of them.

    Raises:
        ValueError: one line per bad key (full key name, value, what is expected), or a test
            dataset that is not registered or whose files are missing.
    """
    c = _Checker(cfg)
    c.numbers("MODEL.PIXEL_MEAN", length=3)
    c.numbers("MODEL.PIXEL_STD", length=3, low=0, low_open=True)
    c.number("INPUT.MIN_SIZE_TEST", low=0, integer=True)
    c.number("INPUT.MAX_SIZE_TEST", low=0, low_open=True, integer=True)
    if training:
        c.number("SOLVER.BASE_LR", low=0, low_open=True)
        c.number("SOLVER.BASE_LR_END", low=0, high=cfg.SOLVER.BASE_LR)
        for key in ("CLIP", "PROMPT", "DECODER"):  # 0 freezes a group
            c.number(f"SOLVER.{key}_MULTIPLIER", low=0)
        for key in ("WEIGHT_DECAY", "WEIGHT_DECAY_NORM", "WEIGHT_DECAY_EMBED"):
            c.number(f"SOLVER.{key}", low=0)
        c.number("SOLVER.MAX_ITER", low=1, integer=True)
        c.number("SOLVER.IMS_PER_BATCH", low=1, integer=True)
        c.number("SOLVER.CHECKPOINT_PERIOD", low=1, integer=True)
        c.number("SOLVER.WARMUP_ITERS", low=0, integer=True)
        c.number("SOLVER.WARMUP_FACTOR", low=0, high=1)
        c.number("SOLVER.MOMENTUM", low=0, high=1)
        c.number("TEST.EVAL_PERIOD", low=0, integer=True)
        if cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
            c.number("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", low=0, low_open=True)
            c.number("SOLVER.CLIP_GRADIENTS.NORM_TYPE", low=0, low_open=True)
        c.numbers("INPUT.MIN_SIZE_TRAIN", low=1, integer=True)
        c.number("INPUT.MAX_SIZE_TRAIN", low=1, integer=True)
        if cfg.INPUT.CROP.ENABLED:
            c.numbers("INPUT.CROP.SIZE", length=2, low=0, low_open=True)
        c.number("INPUT.MAX_MASKS_PER_IMAGE", low=0, integer=True)
        strong = "INPUT.STRONG_AUG."
        for key in ("COLOR_JITTER_PROB", "GRAYSCALE_PROB", "BLUR_PROB"):
            c.number(strong + key, low=0, high=1)
        c.numbers(strong + "COLOR_JITTER", length=4, low=0)
        if len(cfg.INPUT.STRONG_AUG.COLOR_JITTER) == 4:
            c.number_at(strong + "COLOR_JITTER", 3, low=0, high=0.5)  # hue
        c.numbers(strong + "BLUR_SIGMA", length=2, low=0, low_open=True)
        c.ordered(strong + "BLUR_SIGMA")
        c.numbers(strong + "CUTOUT_SCALE", length=2, low=0, high=1)
        c.ordered(strong + "CUTOUT_SCALE")
    problems = list(c.errors)
    if datasets:
        problems += _test_dataset_problems(cfg)
    if problems:
        raise ValueError("invalid config:\n  " + "\n  ".join(problems))


def _test_dataset_problems(cfg: CfgNode) -> list[str]:
    """Unregistered or unprepared ``DATASETS.TEST`` entries, and a fixed vocabulary of the wrong
    size. Listing a dataset reads its folder, not its images."""
    from .evaluation.evaluate import find_missing_datasets
    from .modeling.vocabulary import load_vocabulary

    names = list(cfg.DATASETS.TEST)
    registered = set(DatasetCatalog.list())
    problems = [
        f"DATASETS.TEST: {name!r} is not a registered dataset (see datasets/README.md; "
        'DATASETS.TEST "()" trains without evaluation)'
        for name in names
        if name not in registered
    ]
    known = [n for n in names if n in registered]
    for name, why in find_missing_datasets(known).items():
        problems.append(
            f"DATASETS.TEST: {name!r} is not prepared ({why}); prepare it, or set "
            'DATASETS.TEST "()" to train without evaluation'
        )
    test = cfg.MODEL.PIXELCLIP.TEST
    vocabulary = list(test.VOCABULARY)
    if not vocabulary and test.VOCABULARY_FILE:
        vocabulary = load_vocabulary(test.VOCABULARY_FILE)
    for name in known if vocabulary else []:
        classes = MetadataCatalog.get(name).get("stuff_classes")
        if classes is not None and len(classes) != len(vocabulary):
            key = "VOCABULARY" if test.VOCABULARY else "VOCABULARY_FILE"
            problems.append(
                f"MODEL.PIXELCLIP.TEST.{key}: {len(vocabulary)} classes, but test dataset "
                f"{name!r} has {len(classes)}; its label indices would be scored against the "
                "wrong names"
            )
    return problems
