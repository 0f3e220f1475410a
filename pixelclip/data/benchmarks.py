"""Evaluation benchmarks (METHOD.md §9), registered lazily in detectron2's catalogs.

:func:`register_all_benchmarks` only fills ``DatasetCatalog`` / ``MetadataCatalog``: nothing is
listed or read until ``DatasetCatalog.get(name)`` runs the loader. Every benchmark has
``evaluator_type="sem_seg"`` (detectron2's ``SemSegEvaluator``) and label PNGs holding class
indices ``0..C-1`` as produced by ``datasets/prepare_*.py`` (see ``datasets/README.md`` for the
expected trees): 8-bit with ``ignore_label=255``, or, for the two benchmarks of more than 255
classes (Pascal-Context-459, ADE20K-847), 16-bit with ``ignore_label=65535`` (the convention of
MaskFormer / CAT-Seg, which store them as 16-bit TIFFs).

Names are chosen not to clash with detectron2's builtin ones (``ade20k_sem_seg_val``,
``cityscapes_fine_sem_seg_val``, ...), which stay registered and untouched.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources

from detectron2.data import DatasetCatalog, MetadataCatalog

# Absolute, not relative: the tests also execute this file on its own, outside the package.
from pixelclip.data.sa1b import printable_path

logger = logging.getLogger(__name__)

DATASETS_ENV = "DETECTRON2_DATASETS"
IGNORE_LABEL = 255
IGNORE_LABEL_16BIT = 65535  # label maps of benchmarks with more than 255 classes


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives under the dataset root, and what it holds."""

    name: str
    classes: str  # stem of a JSON file in pixelclip/data/class_names/
    image_dir: str  # relative to the dataset root
    gt_dir: str  # relative to the dataset root
    image_ext: str
    gt_ext: str
    num_images: int
    prepare: str  # the command (script and options) of datasets/ that produces gt_dir
    background_first: bool = False  # class 0 is "background" (VOC-21, Context-60, COCO-Object)
    ignore_label: int = IGNORE_LABEL  # IGNORE_LABEL_16BIT for 16-bit label maps


BENCHMARKS: tuple[BenchmarkSpec, ...] = (
    BenchmarkSpec(
        "coco_stuff_171_val_sem_seg", "coco_stuff_171", "coco-stuff/images/val2017",
        "coco-stuff/annotations_detectron2/val2017", ".jpg", ".png", 5000,
        "prepare_coco_stuff.py",
    ),
    BenchmarkSpec(
        "ade20k_150_val_sem_seg", "ade20k_150", "ADEChallengeData2016/images/validation",
        "ADEChallengeData2016/annotations_detectron2/validation", ".jpg", ".png", 2000,
        "prepare_ade20k_150.py",
    ),
    BenchmarkSpec(
        "pascal_context_59_val_sem_seg", "pascal_context_59", "VOCdevkit/VOC2010/JPEGImages",
        "VOCdevkit/VOC2010/annotations_detectron2/pc59_val", ".jpg", ".png", 5105,
        "prepare_pascal_context.py",
    ),
    BenchmarkSpec(
        "pascal_context_60_val_sem_seg", "pascal_context_60", "VOCdevkit/VOC2010/JPEGImages",
        "VOCdevkit/VOC2010/annotations_detectron2/pc60_val", ".jpg", ".png", 5105,
        "prepare_pascal_context.py", background_first=True,
    ),
    BenchmarkSpec(
        "cityscapes_19_val_sem_seg", "cityscapes_19", "cityscapes/leftImg8bit/val",
        "cityscapes/gtFine/val", "_leftImg8bit.png", "_gtFine_labelTrainIds.png", 500,
        "prepare_cityscapes.py",
    ),
    BenchmarkSpec(
        "voc_20_val_sem_seg", "voc_20", "VOCdevkit/VOC2012/JPEGImages",
        "VOCdevkit/VOC2012/annotations_detectron2/voc20_val", ".jpg", ".png", 1449,
        "prepare_voc.py",
    ),
    BenchmarkSpec(
        "voc_21_val_sem_seg", "voc_21", "VOCdevkit/VOC2012/JPEGImages",
        "VOCdevkit/VOC2012/annotations_detectron2/voc21_val", ".jpg", ".png", 1449,
        "prepare_voc.py", background_first=True,
    ),
    # The three benchmarks of the training-free protocol (datasets/README.md).
    BenchmarkSpec(
        "coco_object_81_val_sem_seg", "coco_object_81", "coco-stuff/images/val2017",
        "coco-stuff/annotations_detectron2/coco_object_val2017", ".jpg", ".png", 5000,
        "prepare_coco_stuff.py --coco-object", background_first=True,
    ),
    BenchmarkSpec(
        "pascal_context_459_val_sem_seg", "pascal_context_459", "VOCdevkit/VOC2010/JPEGImages",
        "VOCdevkit/VOC2010/annotations_detectron2/pc459_val", ".jpg", ".png", 5105,
        "prepare_pascal_context.py", ignore_label=IGNORE_LABEL_16BIT,
    ),
    BenchmarkSpec(
        "ade20k_847_val_sem_seg", "ade20k_847", "ADE20K_2021_17_01/images_detectron2/validation",
        "ADE20K_2021_17_01/annotations_detectron2/validation", ".jpg", ".png", 2000,
        "prepare_ade20k_847.py", ignore_label=IGNORE_LABEL_16BIT,
    ),
)  # fmt: skip

# Official Cityscapes colours of the 19 train ids (cityscapesscripts/helpers/labels.py).
_CITYSCAPES_COLORS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip


def dataset_root(root: str | os.PathLike | None = None) -> str:
    """``root`` if given, else ``$DETECTRON2_DATASETS`` or ``"datasets"``, read now."""
    if root is not None:
        return os.fspath(root)
    return os.path.expanduser(os.getenv(DATASETS_ENV, "datasets"))


@functools.cache
def _read_class_file(key: str) -> tuple[str, ...]:
    try:
        text = resources.files("pixelclip.data").joinpath("class_names", f"{key}.json").read_text()
    except FileNotFoundError:
        raise ValueError(
            f"unknown class-name list {key!r}; choose from {class_list_keys()}"
        ) from None
    names = json.loads(text)
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"class_names/{key}.json must be a JSON list of non-empty strings")
    return tuple(names)


def class_list_keys() -> list[str]:
    """Keys accepted by :func:`load_class_names` (JSON files shipped as package data)."""
    folder = resources.files("pixelclip.data").joinpath("class_names")
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_class_names(key: str) -> list[str]:
    """The class names of a benchmark, e.g. ``load_class_names("ade20k_150")`` (150 names).

    A name "a, b" lists synonyms (METHOD.md §9 averages their text embeddings).
    """
    return list(_read_class_file(key))


def voc_colormap(n: int) -> list[list[int]]:
    """The Pascal VOC colour map (bit-interleaved RGB of each index), ``n`` entries.

    Deterministic and distinct for every index < 256; index 0 is black. Algorithm of the VOC
    devkit's ``labelcolormap.m`` (http://host.robots.ox.ac.uk/pascal/VOC/).
    """
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        colors.append([r, g, b])
    return colors


def _normalise_ext(ext: str) -> str:
    # Accept detectron2's style ("png") as well as full suffixes ("_leftImg8bit.png").
    return ext if ext.startswith((".", "_")) else f".{ext}"


def load_sem_seg_files(
    image_root: str,
    gt_root: str,
    image_ext: str = ".jpg",
    gt_ext: str = ".png",
    *,
    dataset_name: str = "",
    expected_count: int | None = None,
    hint: str = "",
) -> list[dict]:
    """List the (image, label) pairs of a semantic-segmentation folder pair.

    Label files are found recursively under ``gt_root`` by their suffix ``gt_ext``; the image of
    ``gt_root/<rel>/<stem><gt_ext>`` is ``image_root/<rel>/<stem><image_ext>`` (so city
    subfolders and Cityscapes-style suffixes work). Images without a label are not listed (an
    image folder may hold more than the split); labels without an image, and entries that are
    not regular files (FIFOs, devices, dangling symlinks), are dropped with a warning. Files are
    not opened.

    Args:
        image_root: folder of the images.
        gt_root: folder of the label PNGs (uint8 class indices, 255 = ignore).
        image_ext: image file suffix, e.g. ".jpg" or "_leftImg8bit.png" ("jpg" works too).
        gt_ext: label file suffix.
        dataset_name: for messages.
        expected_count: official number of images; a different count logs a warning.
        hint: appended to the error raised when a folder is missing.

    Returns:
        detectron2 dataset dicts ``{"file_name", "sem_seg_file_name"}``, sorted by label path.

    Raises:
        FileNotFoundError: a folder is missing or holds no label file.
    """
    what = f"dataset {dataset_name!r}: " if dataset_name else ""
    for folder, kind in ((gt_root, "label folder"), (image_root, "image folder")):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{what}{kind} {folder} does not exist. {hint}".strip())
    image_ext, gt_ext = _normalise_ext(image_ext), _normalise_ext(gt_ext)
    dicts, orphans, irregular = [], [], []
    for dirpath, dirnames, filenames in os.walk(gt_root):
        dirnames.sort()
        for fname in sorted(filenames):
            if not fname.endswith(gt_ext) or fname.startswith("."):  # dot files: unfinished writes
                continue
            # A FIFO or device would block or never end when the evaluator opens it.
            if not os.path.isfile(os.path.join(dirpath, fname)):
                irregular.append(os.path.join(dirpath, fname))
                continue
            rel = os.path.relpath(os.path.join(dirpath, fname), gt_root)[: -len(gt_ext)]
            image = os.path.join(image_root, rel + image_ext)
            if os.path.isfile(image):
                dicts.append(
                    {"file_name": image, "sem_seg_file_name": os.path.join(dirpath, fname)}
                )
            else:
                orphans.append(image)
    if irregular:
        logger.warning(
            "%s%d entries named like label files are not regular files (FIFOs, devices, "
            "dangling symlinks; e.g. %s); they are left out",
            what,
            len(irregular),
            printable_path(irregular[0]),
        )
    if orphans:
        logger.warning(
            "%s%d label files have no image (e.g. %s); they are left out",
            what,
            len(orphans),
            printable_path(orphans[0]),
        )
    if not dicts:
        raise FileNotFoundError(
            f"{what}no (image, label) pair found: no '*{gt_ext}' under {gt_root} with an image "
            f"'*{image_ext}' under {image_root}. {hint}".strip()
        )
    if expected_count is not None and len(dicts) != expected_count:
        logger.warning(
            "%sfound %d images, the official split has %d: scores will not be comparable to "
            "published numbers",
            what,
            len(dicts),
            expected_count,
        )
    logger.info("%sloaded %d images from %s", what, len(dicts), image_root)
    return dicts


def _register(name: str, loader: Callable[[], list[dict]], metadata: dict, replace: bool) -> None:
    if name in DatasetCatalog.list():
        if not replace:
            raise ValueError(
                f"dataset {name!r} is already registered in detectron2's DatasetCatalog"
            )
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


def register_sem_seg_dataset(
    name: str,
    image_root: str | os.PathLike,
    gt_root: str | os.PathLike,
    class_names: Sequence[str],
    image_ext: str = ".jpg",
    gt_ext: str = ".png",
    *,
    stuff_colors: Sequence[Sequence[int]] | None = None,
    expected_count: int | None = None,
    replace: bool = False,
    **extra_metadata,
) -> None:
    """Register a labelled semantic-segmentation folder pair for evaluation (lazily).

    Label images must hold class indices ``0..len(class_names)-1`` and 255 = ignore. Nothing is
    read until ``DatasetCatalog.get(name)``.

    Args:
        name: new dataset name.
        image_root: folder of the images.
        gt_root: folder of the label PNGs.
        class_names: one name per class index; "a, b" lists synonyms.
        image_ext: image file suffix (see :func:`load_sem_seg_files`).
        gt_ext: label file suffix.
        stuff_colors: one RGB triple per class; default: the VOC colour map.
        expected_count: number of images the split should have (warning when different).
        replace: replace an existing registration of ``name`` instead of raising ValueError.
        **extra_metadata: further MetadataCatalog fields.
    """
    class_names = list(class_names)
    if not class_names:
        raise ValueError(f"dataset {name!r}: class_names is empty")
    colors = (
        [list(c) for c in stuff_colors]
        if stuff_colors is not None
        else voc_colormap(len(class_names) + 1)[1:]
    )
    if len(colors) != len(class_names):
        raise ValueError(
            f"dataset {name!r}: {len(colors)} stuff_colors for {len(class_names)} classes"
        )
    loader = functools.partial(
        load_sem_seg_files,
        os.fspath(image_root),
        os.fspath(gt_root),
        image_ext,
        gt_ext,
        dataset_name=name,
        expected_count=expected_count,
    )
    metadata = dict(
        stuff_classes=class_names,
        stuff_colors=colors,
        ignore_label=IGNORE_LABEL,
        evaluator_type="sem_seg",
        image_root=os.fspath(image_root),
        sem_seg_root=os.fspath(gt_root),
    )
    metadata.update(extra_metadata)
    _register(name, loader, metadata, replace)


def _benchmark_colors(spec: BenchmarkSpec, num_classes: int) -> list[list[int]]:
    if spec.classes == "cityscapes_19":
        return [list(c) for c in _CITYSCAPES_COLORS]
    if spec.background_first:  # background keeps VOC's black, classes their VOC colours
        return voc_colormap(num_classes)
    return voc_colormap(num_classes + 1)[1:]


def _load_benchmark(spec: BenchmarkSpec, root: str | None) -> list[dict]:
    base = dataset_root(root)
    image_root = os.path.join(base, spec.image_dir)
    gt_root = os.path.join(base, spec.gt_dir)
    meta = MetadataCatalog.get(spec.name)
    if getattr(meta, "sem_seg_root", gt_root) != gt_root:
        logger.warning(
            "dataset %r: $%s changed since registration; loading %s (metadata still says %s)",
            spec.name,
            DATASETS_ENV,
            gt_root,
            meta.sem_seg_root,
        )
    hint = (
        f"Prepare it with datasets/{spec.prepare} (see datasets/README.md for the expected tree), "
        f"or point ${DATASETS_ENV} at the folder that holds {spec.gt_dir.split('/')[0]}/ "
        f"(dataset root now: {os.path.abspath(base)})."
    )
    return load_sem_seg_files(
        image_root,
        gt_root,
        spec.image_ext,
        spec.gt_ext,
        dataset_name=spec.name,
        expected_count=spec.num_images,
        hint=hint,
    )


def register_all_benchmarks(root: str | os.PathLike | None = None) -> None:
    """Register every benchmark of :data:`BENCHMARKS` (no disk access; safe to call again).

    Args:
        root: dataset root. None: ``$DETECTRON2_DATASETS`` or ``"datasets"``, read by the loader
            each time ``DatasetCatalog.get`` runs (the metadata's ``image_root`` /
            ``sem_seg_root`` record the value at registration).
    """
    root = os.fspath(root) if root is not None else None
    base = dataset_root(root)
    for spec in BENCHMARKS:
        names = load_class_names(spec.classes)
        metadata = dict(
            stuff_classes=names,
            stuff_colors=_benchmark_colors(spec, len(names)),
            ignore_label=spec.ignore_label,
            evaluator_type="sem_seg",
            image_root=os.path.join(base, spec.image_dir),
            sem_seg_root=os.path.join(base, spec.gt_dir),
        )
        _register(spec.name, functools.partial(_load_benchmark, spec, root), metadata, replace=True)
