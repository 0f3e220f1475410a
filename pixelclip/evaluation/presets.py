"""Evaluation protocol presets: ``paper`` and ``training-free``.

A preset is a set of *defaults*: config keys it sets after the config file (before the command
line's ``KEY VALUE`` pairs and the tools' options, which win), the benchmarks evaluated when none
are named, and per-benchmark settings (test size, background threshold, class-name file) used
unless the command line fixes them for every benchmark (``--test-size`` or
``INPUT.MIN_SIZE_TEST``; ``MODEL.PIXELCLIP.TEST.PROB_THRESHOLD``; a vocabulary by
``MODEL.PIXELCLIP.TEST.VOCABULARY(_FILE)``). :func:`apply_preset` and :func:`benchmark_setup`
do the resolution, key by key.

* ``paper``: the protocol of docs/METHOD.md §9.2 as the config defines it, on the paper's five
  benchmarks; it changes no key.
* ``training-free``: NACLIP's released evaluation (github.com/sinahmr/NACLIP; ``naclip.py`` and
  ``configs/cfg_*.py`` at commit 8865082820483e8985bc8e7b60907651c695b974 for ``naclip.py`` and
  ``cfg_voc21.py``, cbb720dac5e6166bb901c154da0263708945573b for the other configs), benchmark by
  benchmark; see :data:`TRAINING_FREE` and the README section "Comparing with training-free
  methods" for what still differs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

logger = logging.getLogger(__name__)

__all__ = [
    "LARGE_BENCHMARKS",
    "PRESETS",
    "BenchmarkProtocol",
    "BenchmarkSetup",
    "Preset",
    "apply_preset",
    "background_index",
    "benchmark_setup",
    "explicit_keys",
    "get_preset",
    "resolve_benchmark_names",
]

TRAINING_FREE_CLASS_DIR = "class_names/training_free"
# Added to a preset's benchmarks by ``--benchmarks large``.
LARGE_BENCHMARKS: tuple[str, ...] = ("pascal_context_459_val_sem_seg", "ade20k_847_val_sem_seg")


@dataclass(frozen=True)
class BenchmarkProtocol:
    """A preset's settings for one benchmark.

    Attributes:
        test_size: (shortest edge, longest-edge cap) of the test resize; None = the protocol's
            (:func:`pixelclip.evaluation.evaluate.evaluation_resize`).
        prob_threshold: background threshold (0 = none).
        class_file: stem of a JSON list in ``pixelclip/data/class_names/training_free/``; "" =
            the dataset's own ``stuff_classes``.
    """

    test_size: tuple[int, int] | None = None
    prob_threshold: float = 0.0
    class_file: str = ""


@dataclass(frozen=True)
class Preset:
    """An evaluation protocol (see the module docstring).

    Attributes:
        name: "paper" or "training-free".
        summary: one line stating the protocol (printed under the results table).
        benchmarks: dataset names evaluated when none are given.
        config: ``{full config key: value}`` defaults.
        per_benchmark: :class:`BenchmarkProtocol` per dataset name (others: the default one).
        average: the results table gains a column averaging ``benchmarks``.
    """

    name: str
    summary: str
    benchmarks: tuple[str, ...]
    config: Mapping[str, object] = field(default_factory=dict)
    per_benchmark: Mapping[str, BenchmarkProtocol] = field(default_factory=dict)
    average: bool = False

    def protocol_for(self, dataset_name: str) -> BenchmarkProtocol:
        return self.per_benchmark.get(dataset_name, BenchmarkProtocol())


PAPER = Preset(
    name="paper",
    summary=(
        "paper: the config's protocol (reference: 'whole', shortest edge 640, longest <= 2560, "
        "cosine argmax, 8 templates), the dataset's class names, no background threshold, no "
        "PAMR"
    ),
    benchmarks=(
        "coco_stuff_171_val_sem_seg",
        "ade20k_150_val_sem_seg",
        "pascal_context_59_val_sem_seg",
        "cityscapes_19_val_sem_seg",
        "voc_20_val_sem_seg",
    ),
)

# NACLIP (github.com/sinahmr/NACLIP). Sources of every value:
#   naclip.py @8865082: NACLIP.__init__ defaults logit_scale=40, prob_thd=0.0,
#     slide_stride=112, slide_crop=224, pamr_steps=10, pamr_stride=(8, 16); the text
#     embedding of each name averages openai_imagenet_template (80 templates) after
#     normalising each; predict() runs forward_slide whenever slide_crop > 0 (no config sets it
#     to 0, so every benchmark is evaluated with sliding windows, none on the whole image).
#   eval.py @399b12a: "--pamr off" sets pamr_steps 0, "--pamr on" 10; PAMR is off here by
#     default (MODEL.PIXELCLIP.TEST.PAMR_STEPS 10 turns it on), see the README section.
#   configs/cfg_*.py @cbb720d (cfg_voc21.py @8865082): test_pipeline
#     Resize(scale=(2048, S), keep_ratio=True) with S = 336, except cfg_coco_stuff164k.py
#     S = 448 and cfg_city_scapes.py S = 560; prob_thd=0.1 in cfg_voc21.py, cfg_context60.py,
#     cfg_coco_object.py only; name_path='./configs/cls_<benchmark>.txt'.
_NACLIP_CONFIG: dict[str, object] = {
    "MODEL.PIXELCLIP.TEST.PROTOCOL": "slide",
    "MODEL.PIXELCLIP.TEST.SLIDE_CROP": 224,  # naclip.py slide_crop=224
    "MODEL.PIXELCLIP.TEST.SLIDE_STRIDE": 112,  # naclip.py slide_stride=112
    "MODEL.PIXELCLIP.TEST.PROMPT_ENSEMBLE": "imagenet",  # openai_imagenet_template, 80
    "MODEL.PIXELCLIP.TEST.READOUT": "training_free",  # names as queries, softmax, max
    "MODEL.PIXELCLIP.TEST.LOGIT_SCALE": 40.0,  # naclip.py logit_scale=40
    "MODEL.PIXELCLIP.TEST.PROB_THRESHOLD": 0.0,  # naclip.py prob_thd=0.0; per benchmark below
    "MODEL.PIXELCLIP.TEST.PAMR_STEPS": 0,  # eval.py --pamr off (on: 10)
    "MODEL.PIXELCLIP.TEST.PAMR_DILATIONS": [8, 16],  # naclip.py pamr_stride=(8, 16)
}


def _naclip(short_edge: int, threshold: float, class_file: str) -> BenchmarkProtocol:
    # Resize(scale=(2048, short_edge), keep_ratio=True): shortest edge short_edge, longest <= 2048.
    return BenchmarkProtocol((short_edge, 2048), threshold, class_file)


TRAINING_FREE = Preset(
    name="training-free",
    summary=(
        "training-free (NACLIP's configs): sliding windows 224 / stride 112, shortest edge 336 "
        "(COCO-Stuff 448, Cityscapes 560), longest <= 2048, every class name its own query, "
        "80 ImageNet templates, softmax x 40, background threshold 0.1 on VOC-21, Context-60 and "
        "COCO-Object, PAMR off unless stated"
    ),
    benchmarks=(
        "voc_21_val_sem_seg",
        "pascal_context_60_val_sem_seg",
        "coco_object_81_val_sem_seg",
        "voc_20_val_sem_seg",
        "cityscapes_19_val_sem_seg",
        "pascal_context_59_val_sem_seg",
        "ade20k_150_val_sem_seg",
        "coco_stuff_171_val_sem_seg",
    ),
    config=_NACLIP_CONFIG,
    per_benchmark={
        "voc_21_val_sem_seg": _naclip(336, 0.1, "voc_21"),  # cfg_voc21.py
        "pascal_context_60_val_sem_seg": _naclip(336, 0.1, "pascal_context_60"),  # cfg_context60
        "coco_object_81_val_sem_seg": _naclip(336, 0.1, "coco_object_81"),  # cfg_coco_object.py
        "voc_20_val_sem_seg": _naclip(336, 0.0, "voc_20"),  # cfg_voc20.py
        "cityscapes_19_val_sem_seg": _naclip(560, 0.0, "cityscapes_19"),  # cfg_city_scapes.py
        "pascal_context_59_val_sem_seg": _naclip(336, 0.0, "pascal_context_59"),  # cfg_context59
        "ade20k_150_val_sem_seg": _naclip(336, 0.0, "ade20k_150"),  # cfg_ade20k.py
        "coco_stuff_171_val_sem_seg": _naclip(448, 0.0, "coco_stuff_171"),  # cfg_coco_stuff164k
        # No NACLIP config: the common short edge, the datasets' own class names.
        "pascal_context_459_val_sem_seg": BenchmarkProtocol((336, 2048), 0.0, ""),
        "ade20k_847_val_sem_seg": BenchmarkProtocol((336, 2048), 0.0, ""),
    },
    average=True,
)

PRESETS: dict[str, Preset] = {p.name: p for p in (PAPER, TRAINING_FREE)}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` ("paper" or "training-free")."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None


def explicit_keys(opts: Sequence[str]) -> set[str]:
    """The config keys of a ``KEY VALUE ...`` list (detectron2's ``opts``)."""
    if len(opts) % 2:
        raise ValueError(f"config overrides must be KEY VALUE pairs, got an odd list: {opts}")
    return {str(k) for k in opts[0::2]}


def _set(cfg: CfgNode, key: str, value) -> None:
    node = cfg
    *path, last = key.split(".")
    for part in path:
        node = node[part]
    if last not in node:
        raise KeyError(f"preset key {key!r} is not a config key")
    node[last] = type(node[last])(value) if isinstance(node[last], (float, int)) else value


def apply_preset(cfg: CfgNode, preset: Preset, explicit: Iterable[str] = ()) -> list[str]:
    """Set the preset's config defaults on ``cfg`` (not frozen), except the keys in
    ``explicit``; returns the keys it set. Call after the config file, before the command
    line's overrides (which then win either way)."""
    explicit = set(explicit)
    changed = []
    for key, value in preset.config.items():
        if key not in explicit:
            _set(cfg, key, value)
            changed.append(key)
    return changed


def resolve_benchmark_names(names: Sequence[str] | None, preset: Preset) -> list[str]:
    """Benchmarks to evaluate: the preset's when ``names`` is empty or None; ``"large"`` (alone
    or among others) stands for the preset's benchmarks plus :data:`LARGE_BENCHMARKS`. Other
    names are returned as given (aliases are resolved by the caller)."""
    if not names:
        return list(preset.benchmarks)
    out: list[str] = []
    for name in names:
        expansion = (
            [*preset.benchmarks, *LARGE_BENCHMARKS] if name.strip().lower() == "large" else [name]
        )
        out += [n for n in expansion if n not in out]
    return out


def background_index(dataset_name: str) -> int | None:
    """0 if the dataset's class 0 is "background" (VOC-21, Context-60, COCO-Object), else None."""
    classes = MetadataCatalog.get(dataset_name).get("stuff_classes") or []
    first = classes[0].split(",")[0].strip().lower() if classes else ""
    return 0 if first == "background" else None


def _training_free_names(key: str) -> tuple[list[str], str]:
    import json

    path = resources.files("pixelclip.data").joinpath(TRAINING_FREE_CLASS_DIR, f"{key}.json")
    where = f"pixelclip/data/{TRAINING_FREE_CLASS_DIR}/{key}.json"
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"preset class-name file {where} does not exist") from None
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"{where}: expected a JSON list of non-empty class names")
    return names, where


@dataclass(frozen=True)
class BenchmarkSetup:
    """What one benchmark is evaluated with (the resolved preset and overrides).

    Attributes:
        test_size: (shortest edge, longest-edge cap).
        prob_threshold: background threshold (0 = none).
        background: background class index, or None.
        class_names: the vocabulary to set, or None (a fixed vocabulary of the config).
        vocabulary: where the class names come from (a file path or a description).
    """

    test_size: tuple[int, int]
    prob_threshold: float
    background: int | None
    class_names: list[str] | None
    vocabulary: str


def benchmark_setup(
    cfg: CfgNode,
    preset: Preset,
    dataset_name: str,
    explicit: Iterable[str] = (),
    test_size: int | None = None,
) -> BenchmarkSetup:
    """Resolve one benchmark's settings: explicit command-line values first, then the preset's
    per-benchmark value, then the config.

    Args:
        cfg: the final config (preset and overrides applied).
        preset: the preset.
        dataset_name: a registered dataset.
        explicit: config keys given on the command line (see :func:`explicit_keys`).
        test_size: ``--test-size`` (the shortest edge for every benchmark), or None.

    Raises:
        ValueError: a class-name file of the wrong length or format (the message names it).
    """
    from .evaluate import evaluation_resize

    explicit = set(explicit)
    protocol = preset.protocol_for(dataset_name)
    if test_size is not None:
        size = evaluation_resize(cfg, dataset_name, test_size)
    elif "INPUT.MIN_SIZE_TEST" in explicit:
        size = (int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST))
    elif protocol.test_size is not None:
        size = protocol.test_size
    else:
        size = evaluation_resize(cfg, dataset_name)
    test = cfg.MODEL.PIXELCLIP.TEST
    if "MODEL.PIXELCLIP.TEST.PROB_THRESHOLD" in explicit or not preset.per_benchmark:
        threshold = float(test.PROB_THRESHOLD)
    else:
        threshold = protocol.prob_threshold
    background = background_index(dataset_name)
    if test.VOCABULARY or test.VOCABULARY_FILE:
        names = None
        vocabulary = (
            f"MODEL.PIXELCLIP.TEST.VOCABULARY_FILE {test.VOCABULARY_FILE}"
            if test.VOCABULARY_FILE and not test.VOCABULARY
            else "MODEL.PIXELCLIP.TEST.VOCABULARY"
        )
    elif protocol.class_file:
        names, vocabulary = _training_free_names(protocol.class_file)
        expected = MetadataCatalog.get(dataset_name).get("stuff_classes")
        if expected is not None and len(expected) != len(names):
            raise ValueError(
                f"{vocabulary}: {len(names)} classes, but dataset {dataset_name!r} has "
                f"{len(expected)}; expected one entry per label index"
            )
    else:
        from ..data.benchmarks import BENCHMARKS

        names = list(MetadataCatalog.get(dataset_name).stuff_classes)
        vocabulary = f"stuff_classes of {dataset_name}"
        spec = next((b for b in BENCHMARKS if b.name == dataset_name), None)
        if spec is not None:
            vocabulary = f"pixelclip/data/class_names/{spec.classes}.json ({vocabulary})"
    return BenchmarkSetup(tuple(int(v) for v in size), threshold, background, names, vocabulary)
