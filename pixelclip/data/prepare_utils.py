"""Shared helpers of the ``datasets/prepare_*.py`` label converters.

Every converter reads an official release, writes detectron2-style label PNGs (class indices
``0..C-1``; 8-bit with 255 = ignore, or 16-bit with 65535 = ignore for benchmarks of more than 255
classes) and places the split's images under the dataset root. The helpers here make every script
behave the same way:

* atomic writes (temporary file in the destination folder + ``os.replace``), so an interrupted run
  never leaves a truncated PNG, and a re-run skips what is done (resumable);
* images are hard-linked into the dataset root (no extra space), with a copy as fallback, or used in
  place when the release already sits at the expected location;
* a progress bar (log lines stay above it), and a final check of the number of prepared images
  against the official count (a warning, or an error with ``--strict``).

A script is its label conversion plus a plan: :func:`build_parser` gives the options all scripts
share, and :func:`run` is the whole ``main`` around a function that finds the release and lists
the :class:`Sample` s to convert (a :class:`Conversion`).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..checkpoint.safe_io import write_atomically
from ..cli_help import HelpFormatter
from ..logs import progress as progress_bar

logger = logging.getLogger(__name__)

DATASETS_ENV = "DETECTRON2_DATASETS"
IGNORE_LABEL = 255
# Ignore value of 16-bit label maps (benchmarks of more than 255 classes: PC-459, ADE-847), as in
# the detectron2 projects that evaluate them (MaskFormer's prepare_ade20k_full_sem_seg.py).
IGNORE_LABEL_16BIT = 65535
LINK_MODES = ("hardlink", "symlink", "copy")

# Exit codes of the prepare scripts' ``main``.
EXIT_OK = 0
EXIT_COUNT_MISMATCH = 2


def default_dataset_root() -> Path:
    """The dataset root: ``$DETECTRON2_DATASETS`` if set, else ``./datasets`` (read per call)."""
    return Path(os.path.expanduser(os.getenv(DATASETS_ENV, "datasets")))


def described_default(text: str, default: str) -> str:
    """Help text of an option whose default is computed at run time (its argparse default is None).

    The shared :class:`~pixelclip.cli_help.HelpFormatter` appends ``(default: <value>)`` unless the
    text mentions ``%(default)``; ``%(default).0s`` mentions it and prints nothing, so the reader
    sees ``default`` once, described, instead of ``(default: None)``.
    """
    return f"{text} (default: {default})%(default).0s"


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Add the options every prepare script shares: --root, --link-mode, --overwrite, --strict,
    --quiet."""
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help=described_default(
            "dataset root that receives the detectron2-style folders",
            f"${DATASETS_ENV} if set, else ./datasets",
        ),
    )
    parser.add_argument(
        "--link-mode",
        choices=LINK_MODES,
        default="hardlink",
        help="how images are placed under the dataset root when the release lies elsewhere: "
        "hardlink (no extra space; falls back to copy across file systems), symlink, or copy",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="convert again even when an output file exists; without it finished files are "
        "skipped, so an interrupted run resumes where it stopped",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with an error (code 2) when the number of prepared images differs from the "
        "official count; without it a clear warning is printed",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def resolve_root(root: Path | None) -> Path:
    """``root`` if given, else :func:`default_dataset_root`."""
    return Path(root) if root is not None else default_dataset_root()


def atomic_save_png(label: np.ndarray, path: Path) -> None:
    """Write a label map as a grayscale PNG, atomically: 8-bit for a uint8 array, 16-bit for uint16.

    Args:
        label: (H, W) uint8 or uint16 array of class indices (and the ignore value).
        path: destination; its folder is created if needed.
    """
    if label.ndim != 2:
        raise ValueError(f"label for {path} must be 2-D (H, W), got shape {label.shape}")
    if label.dtype == np.uint8:
        image = Image.fromarray(label, mode="L")
    elif label.dtype == np.uint16:
        image = Image.fromarray(label)  # PIL mode "I;16": a 16-bit grayscale PNG
    else:
        raise ValueError(f"label for {path} must be uint8 or uint16, got {label.dtype}")
    write_atomically(path, lambda f: image.save(f, format="PNG"))


def place_image(src: Path, dst: Path, mode: str = "hardlink") -> None:
    """Make ``dst`` hold the image ``src`` (no-op when it exists or is the same file).

    The link or copy is made under a temporary name and renamed, so ``dst`` is never partial.
    """
    if mode not in LINK_MODES:
        raise ValueError(f"unknown link mode {mode!r}; choose from {LINK_MODES}")
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    if mode == "hardlink":
        try:
            os.link(src, tmp)
        except OSError:  # other file system, or links not supported: copy instead
            shutil.copy2(src, tmp)
    elif mode == "symlink":
        os.symlink(os.path.abspath(src), tmp)
    else:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def read_label_image(path: Path) -> np.ndarray:
    """Read a single-channel label image (8/16-bit grayscale or palette PNG) as integer indices.

    Palette ("P") images yield their palette indices, which is what VOC's SegmentationClass PNGs
    store; converting them to RGB would lose the class ids, so multi-channel images are refused.

    Returns:
        (H, W) integer array.
    """
    with Image.open(path) as img:
        if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
            raise ValueError(
                f"{path}: expected a single-channel label image (mode L, P or I), got mode "
                f"{img.mode!r}; label PNGs must hold class ids, not colours"
            )
        return np.array(img)


def lookup_table(
    mapping: dict[int, int],
    default: int = IGNORE_LABEL,
    size: int = 256,
    dtype: type = np.uint8,
) -> np.ndarray:
    """A (size,) table of ``dtype``: each key of ``mapping`` -> its value, other indices ->
    ``default``."""
    lut = np.full(size, default, dtype=dtype)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def apply_lut(label: np.ndarray, lut: np.ndarray, path: Path | str = "") -> np.ndarray:
    """Map raw label ids through ``lut``; ids beyond the table are an error naming ``path``.

    Args:
        label: (H, W) non-negative integer array.
        lut: (N,) uint8 or uint16 table.

    Returns:
        (H, W) array of the table's dtype.
    """
    if label.size and (label.min() < 0 or label.max() >= len(lut)):
        raise ValueError(
            f"{path}: label ids must lie in [0, {len(lut) - 1}], found "
            f"[{label.min()}, {label.max()}]"
        )
    return lut[label]


@dataclass(frozen=True)
class Sample:
    """One image of a split: where its image and raw label come from, where outputs go."""

    key: str
    image_src: Path
    image_dst: Path
    label_src: Path
    label_dsts: tuple[Path, ...]


@dataclass
class Summary:
    """What a conversion run did."""

    converted: int = 0
    skipped: int = 0
    missing: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        """Samples whose outputs now exist."""
        return self.converted + self.skipped


def convert_samples(
    samples: Iterable[Sample],
    convert: Callable[[Sample], Sequence[np.ndarray]],
    *,
    link_mode: str = "hardlink",
    overwrite: bool = False,
    desc: str = "",
    progress: bool = True,
    total: int | None = None,
    place: Callable[[Sample, str], None] | None = None,
) -> Summary:
    """Place each sample's image and write its converted label maps.

    Args:
        samples: the split's samples.
        convert: maps a sample to one (H, W) label array per entry of ``sample.label_dsts``.
        link_mode: see :func:`place_image`.
        place: ``place(sample, link_mode)`` puts the sample's image at ``sample.image_dst``
            (default: :func:`place_image` of ``image_src``; a script that resizes images writes
            them itself).
        overwrite: convert even when every output exists.
        desc: progress-bar title.
        progress: show a tqdm bar.
        total: number of samples, for the bar when ``samples`` is a generator.

    Returns:
        counts of converted and skipped samples, and the keys of samples whose image or raw label
        is missing from the release (they are left out, and reported).
    """
    summary = Summary()
    bar = progress_bar(samples, desc=desc, total=total, disable=not progress, unit="img")
    with bar as samples_shown:
        for sample in samples_shown:
            if not sample.image_src.is_file() or not sample.label_src.is_file():
                summary.missing.append(sample.key)
                continue
            if place is None:
                place_image(sample.image_src, sample.image_dst, link_mode)
            else:
                place(sample, link_mode)
            if not overwrite and all(p.is_file() for p in sample.label_dsts):
                summary.skipped += 1
                continue
            labels = convert(sample)
            if len(labels) != len(sample.label_dsts):
                raise RuntimeError(
                    f"{sample.key}: converter returned {len(labels)} label maps for "
                    f"{len(sample.label_dsts)} outputs"
                )
            for label, dst in zip(labels, sample.label_dsts):
                atomic_save_png(label, dst)
            summary.converted += 1
    return summary


def report(summary: Summary, expected: int | None, what: str, strict: bool) -> int:
    """Print the outcome and check the image count; return the script's exit code.

    Args:
        summary: result of :func:`convert_samples`.
        expected: official number of images of the split (None: no check).
        what: dataset and split, for the messages.
        strict: a count mismatch is an error (exit code 2) instead of a warning.
    """
    print(f"{what}: {summary.converted} converted, {summary.skipped} already done.")
    if summary.missing:
        shown = ", ".join(summary.missing[:5]) + (" ..." if len(summary.missing) > 5 else "")
        print(
            f"WARNING: {what}: {len(summary.missing)} listed images lack their image or label "
            f"file in the release and were left out: {shown}",
            file=sys.stderr,
        )
    if expected is not None and summary.done != expected:
        level = "ERROR" if strict else "WARNING"
        print(
            f"{level}: {what}: {summary.done} images prepared, the official split has {expected}. "
            "Is the release complete? Scores on a partial split are not comparable to "
            "published numbers.",
            file=sys.stderr,
        )
        return EXIT_COUNT_MISMATCH if strict else EXIT_OK
    if expected is not None:
        print(f"{what}: image count {summary.done} matches the official split.")
    return EXIT_OK


def require_dir(path: Path, what: str, hint: str) -> Path:
    """Return ``path`` if it is a folder, else raise FileNotFoundError naming it and a hint."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} is not a folder. {hint}")
    return path


def read_id_list(path: Path) -> list[str]:
    """Read a split file (one image id per line, blank lines ignored)."""
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Conversion:
    """What a prepare script converts: ``convert`` maps each sample to its label maps."""

    what: str  # dataset and split, for the progress bar and the messages
    samples: Sequence[Sample]
    convert: Callable[[Sample], Sequence[np.ndarray]]
    expected: int | None  # official number of images (None: no count check)
    # places a sample's image (see convert_samples); None: link or copy image_src
    place: Callable[[Sample, str], None] | None = None
    # keys of listed images the release has no annotation for (reported with the missing files)
    missing: Sequence[str] = ()


def build_parser(
    doc: str,
    splits: Mapping[str, int],
    default_split: str,
    folders: Mapping[str, tuple[str, str]],
) -> argparse.ArgumentParser:
    """The parser of a prepare script, with the project's help format (every option's default).

    Args:
        doc: the script's docstring, shown as the description.
        splits: each split the script converts -> its official image count (``--split``).
        default_split: the split converted by default.
        folders: one path option per entry, ``option -> (help, description of its default)``;
            the argparse default is None (the script computes it from the other options).
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)
    for option, (text, default) in folders.items():
        parser.add_argument(option, type=Path, default=None, help=described_default(text, default))
    counts = ", ".join(f"{split}: {n}" for split, n in splits.items())
    parser.add_argument(
        "--split",
        choices=sorted(splits),
        default=default_split,
        help=f"split to convert (official image counts: {counts})",
    )
    add_common_args(parser)
    return parser


def lut_converter(
    *luts: np.ndarray, read: Callable[[Path], np.ndarray] | None = None
) -> Callable[[Sample], list[np.ndarray]]:
    """A ``convert`` for :func:`convert_samples`: the raw label of a sample (read with ``read``,
    default :func:`read_label_image`) mapped through each table, one label map per table."""
    reader = read or read_label_image

    def convert(sample: Sample) -> list[np.ndarray]:
        raw = reader(sample.label_src)
        return [apply_lut(raw, lut, sample.label_src) for lut in luts]

    return convert


def samples_from_labels(
    label_files: Iterable[Path], image_dir: Path, out: Path, split: str, image_ext: str = ".jpg"
) -> list[Sample]:
    """One sample per raw label file: the image of the same stem in ``image_dir``, placed at
    ``out/images/<split>/``; the label written to ``out/annotations_detectron2/<split>/<stem>.png``
    (the layout of ADE20K and COCO-Stuff)."""
    return [
        Sample(
            key=f.stem,
            image_src=image_dir / f"{f.stem}{image_ext}",
            image_dst=out / "images" / split / f"{f.stem}{image_ext}",
            label_src=f,
            label_dsts=(out / "annotations_detectron2" / split / f"{f.stem}.png",),
        )
        for f in label_files
    ]


def samples_from_ids(
    ids: Iterable[str],
    image_dir: Path,
    out_image_dir: Path,
    label_src: Callable[[str], Path],
    label_dirs: Sequence[Path],
) -> list[Sample]:
    """One sample per image id of a split list: ``<id>.jpg`` of ``image_dir`` placed in
    ``out_image_dir``, the raw label ``label_src(id)``, one ``<id>.png`` per folder of
    ``label_dirs`` (the layout of Pascal VOC and Pascal-Context)."""
    return [
        Sample(
            key=i,
            image_src=image_dir / f"{i}.jpg",
            image_dst=out_image_dir / f"{i}.jpg",
            label_src=label_src(i),
            label_dsts=tuple(d / f"{i}.png" for d in label_dirs),
        )
        for i in ids
    ]


def run(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    plan: Callable[[argparse.Namespace, Path], Conversion],
) -> int:
    """The ``main`` of a prepare script; returns its exit code.

    Parses ``argv``, resolves the dataset root, asks ``plan(args, root)`` for the samples (a
    missing release folder, raised as FileNotFoundError, is a usage error), converts them with a
    progress bar and checks the count (:func:`report`).
    """
    args = parser.parse_args(argv)
    root = resolve_root(args.root)
    try:
        job = plan(args, root)
    except FileNotFoundError as e:
        parser.error(str(e))
    summary = convert_samples(
        job.samples,
        job.convert,
        link_mode=args.link_mode,
        overwrite=args.overwrite,
        desc=job.what,
        progress=not args.quiet,
        total=len(job.samples),
        place=job.place,
    )
    summary.missing[:0] = list(job.missing)
    return report(summary, job.expected, job.what, args.strict)
