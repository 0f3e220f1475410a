"""Training datasets without semantic labels: SA-1B (image + mask JSON) and plain image folders.

Both are registered lazily in detectron2's ``DatasetCatalog``: registration stores a function,
and no file is touched until the dataset is requested (``DatasetCatalog.get``), so importing
``pixelclip`` works without any data on disk.

SA-1B layout (the release layout, https://ai.meta.com/datasets/segment-anything/)::

    $DETECTRON2_DATASETS/sa1b/          (or DATASETS.SA1B.ROOT)
      sa_000000/sa_1.jpg  sa_000000/sa_1.json  ...      one folder per release tar
      sa_000001/...
      (images at any depth are found; besides JPEG, PNG and WebP images of your own are read)

The JSON files may also live in a separate folder (``annotation_root``, config key
``DATASETS.SA1B.ANNOTATION_ROOT``) that mirrors the image tree: the annotation of
``ROOT/sa_000000/sa_1.jpg`` is then ``ANNOTATION_ROOT/sa_000000/sa_1.json``, which is the tree
``tools/generate_masks.py --output`` writes.

Dataset dicts hold ``file_name``, ``annotation_file`` and ``image_id`` (the file stem, e.g.
"sa_1"); no ``height`` / ``width``: reading them would mean opening ~500k JSONs at listing time,
so the mapper reports them from the decoded image instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = [
    "SA1BFormatError",
    "MAX_ANNOTATION_BYTES",
    "default_sa1b_root",
    "printable_path",
    "regular_file_problem",
    "list_sa1b_images",
    "load_sa1b_dicts",
    "load_sa1b_annotations",
    "parse_sa1b_annotations",
    "register_sa1b",
    "register_sa1b_from_config",
    "register_all_sa1b",
    "load_image_folder_dicts",
    "register_image_folder",
]

logger = logging.getLogger(__name__)

SA1B_TRAIN = "sa1b_train"
# SA-1B ships JPEGs; users' own image folders (tools/generate_masks.py) may hold PNG / WebP too.
SA1B_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# An annotation JSON larger than this is refused before json.load. SA-1B's largest files are a few
# tens of MB; json.load needs several times the file size in Python objects, so a multi-GB file
# (or an endless stream behind the name) would exhaust memory instead of failing one sample.
MAX_ANNOTATION_BYTES = 256 * 1024 * 1024
# How many names a listing message quotes.
_NAMES_SHOWN = 3


class SA1BFormatError(ValueError):
    """An SA-1B annotation file is missing, unreadable or not in the SA-1B format."""


def printable_path(path: str | bytes | os.PathLike) -> str:
    """``path`` as text that any log handler can write.

    A file name whose bytes are not valid UTF-8 arrives as a ``str`` with surrogate escapes
    (``os.fsdecode``); writing it to a UTF-8 log file or stream raises ``UnicodeEncodeError`` in the
    handler, and the message is lost. The undecodable bytes are shown as ``\\xNN`` instead.
    """
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:  # a lone surrogate no file name produces (e.g. from a JSON value)
        return os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def regular_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a data file, or None when it is a regular file.

    Only ``os.stat`` is used: opening a FIFO blocks until a writer appears and a character device
    may never end, so both must be refused before any ``open``. Symlinks are followed.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as e:
        return f"cannot stat it ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    kinds = [
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"{kind}, not a regular file"


def default_sa1b_root() -> str:
    """``$DETECTRON2_DATASETS/sa1b`` (``datasets/sa1b`` when the variable is unset)."""
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "sa1b")


def _existing_root(root: str | os.PathLike | None, what: str) -> Path:
    path = Path(root) if root else Path(default_sa1b_root())
    if not path.is_dir():
        env = os.getenv("DETECTRON2_DATASETS")
        raise FileNotFoundError(
            f"{what} folder {str(path)!r} does not exist (DETECTRON2_DATASETS="
            f"{env!r}); put the data in $DETECTRON2_DATASETS/sa1b or set DATASETS.SA1B.ROOT"
        )
    return path


def _existing_annotation_root(annotation_root: str | os.PathLike | None) -> Path | None:
    """``annotation_root`` as a Path (None when unset); a missing folder is an error."""
    if not annotation_root:
        return None
    path = Path(annotation_root)
    if not path.is_dir():
        raise FileNotFoundError(
            f"SA-1B annotation folder {str(path)!r} does not exist; set "
            "DATASETS.SA1B.ANNOTATION_ROOT to the folder mirroring the image tree (what "
            'tools/generate_masks.py --output writes), or to "" for the JSON next to each image'
        )
    return path


def _natural_key(path: str) -> list[Any]:
    """Sort key ordering "sa_2" before "sa_10"."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def _read_subset(subset: str | os.PathLike, root: Path) -> list[str]:
    path = Path(subset)
    if not path.is_file() and not path.is_absolute() and (root / path).is_file():
        path = root / path
    if not path.is_file():
        raise FileNotFoundError(f"SA-1B subset list {str(subset)!r} not found (nor under {root})")
    entries = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append(line)
    if not entries:
        raise ValueError(f"SA-1B subset list {str(path)!r} names no image")
    return entries


def _scan(
    root: Path,
    suffixes: Iterable[str],
    folder_key: Callable[[str], Any] | None = _natural_key,
) -> list[str]:
    """Regular files named like images anywhere under ``root``, as relative POSIX paths, folder by
    folder (a folder's own files in natural order before its sub-folders, sorted by
    ``folder_key``), as ``os.walk`` would visit them.

    Entries with an image suffix that are not regular files (FIFOs, sockets, devices, dangling
    symlinks, folders named like images) are left out and logged once, with their count and first
    names: the mapper would block forever opening a FIFO. ``os.scandir`` knows the file type from
    the directory listing itself, so regular files cost no extra system call. Symlinked folders are
    not followed (as in ``os.walk``); unreadable folders are logged and skipped.
    """
    suffixes = tuple(suffixes)
    found: list[str] = []
    skipped: list[str] = []
    pending = [""]  # folders still to list, relative to root; the next one is last
    while pending:
        rel = pending.pop()
        try:
            with os.scandir(root / rel if rel else root) as it:
                entries = list(it)
        except OSError as e:
            logger.warning("cannot list %s, skipped: %s", printable_path(root / rel), e)
            continue
        files, folders = [], []
        for entry in entries:
            named_like_image = entry.name.lower().endswith(suffixes)
            try:
                is_folder = entry.is_dir()
                is_file = not is_folder and named_like_image and entry.is_file()
            except OSError:
                is_folder = is_file = False
            if is_folder and not entry.is_symlink():
                folders.append(entry.name)
            if is_file:
                files.append(entry.name)
            elif named_like_image:
                skipped.append(f"{rel}/{entry.name}" if rel else entry.name)
        files.sort(key=_natural_key)
        found.extend(f"{rel}/{n}" if rel else n for n in files)
        folders.sort(key=folder_key, reverse=True)  # popped from the end: first folder first
        pending.extend(f"{rel}/{n}" if rel else n for n in folders)
    if skipped:
        logger.warning(
            "skipped %d entries under %s named like images that are not regular files (FIFOs, "
            "devices, sockets, dangling symlinks or folders), e.g. %s",
            len(skipped), printable_path(root),
            ", ".join(printable_path(n) for n in skipped[:_NAMES_SHOWN]),
        )  # fmt: skip
    return found


def list_sa1b_images(
    root: str | os.PathLike, subset: str | os.PathLike | None = None, max_images: int = 0
) -> list[str]:
    """Relative paths of the SA-1B images to use, in a deterministic order.

    Args:
        root: the SA-1B root folder.
        subset: optional text file (absolute, relative to the working directory, or relative to
            ``root``) with one entry per line (``#`` starts a comment): an image id ("sa_1",
            "sa_1.jpg"), found by listing the root, or a path relative to the root
            ("sa_000000/sa_1.jpg"), used without listing (so not checked here: the mapper
            refuses a path that is not a regular file); kept in the file's order.
        max_images: keep only the first ``max_images`` images (0 = all).

    Returns:
        POSIX paths relative to ``root``; listed entries are regular files (see :func:`_scan`).

    Raises:
        FileNotFoundError: the root or the subset file is missing, or no image was found.
    """
    root = _existing_root(root, "SA-1B root")
    if subset:
        entries = _read_subset(subset, root)
        listing: dict[str, str] | None = None
        paths = []
        missing = []
        for entry in entries:
            if not entry.lower().endswith(SA1B_IMAGE_SUFFIXES):
                entry += ".jpg"
            if "/" in entry:
                paths.append(entry)
                continue
            if listing is None:  # list the root only when a bare id needs resolving
                listing = {p.rsplit("/", 1)[-1]: p for p in _scan(root, SA1B_IMAGE_SUFFIXES)}
            if entry in listing:
                paths.append(listing[entry])
            else:
                missing.append(entry)
        if missing:
            logger.warning(
                "%d of %d images of the SA-1B subset %s are not under %s (e.g. %s)",
                len(missing), len(entries), subset, root, ", ".join(missing[:3]),
            )  # fmt: skip
    else:
        paths = _scan(root, SA1B_IMAGE_SUFFIXES)
    if max_images > 0:
        paths = paths[:max_images]
    if not paths:
        raise FileNotFoundError(
            f"no image ({', '.join(SA1B_IMAGE_SUFFIXES)}) found under {str(root)!r}"
        )
    return paths


def load_sa1b_dicts(
    root: str | os.PathLike | None = None,
    subset: str | os.PathLike | None = None,
    max_images: int = 0,
    *,
    annotation_root: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Dataset dicts of SA-1B (see the module docstring); ``root=None`` = :func:`default_sa1b_root`.

    Args:
        annotation_root: folder mirroring the tree under ``root`` that holds the JSON files;
            None or "" = the JSON next to each image. Annotation files are not checked here (a
            missing one makes the mapper skip that sample with a warning).

    Returns:
        dicts with ``file_name`` (the JPEG), ``annotation_file`` (``<stem>.json`` next to it, or
        at the same relative path under ``annotation_root``) and ``image_id`` (the file stem).

    Raises:
        FileNotFoundError: ``root`` or ``annotation_root`` is not a folder, or no image is found.
    """
    root_path = _existing_root(root, "SA-1B root")
    ann_path = _existing_annotation_root(annotation_root)
    dicts = []
    for rel in list_sa1b_images(root_path, subset, max_images):
        image = root_path / rel
        # Same naming as pixelclip.masks.writer.output_paths: only the last suffix changes.
        json_rel = Path(rel).with_suffix(".json")
        annotation = (ann_path / json_rel) if ann_path is not None else (root_path / json_rel)
        dicts.append(
            {
                "file_name": str(image),
                "annotation_file": str(annotation),
                "image_id": image.stem,
            }
        )
    logger.info(
        "Loaded %d SA-1B images from %s (annotations: %s)",
        len(dicts), root_path, ann_path if ann_path is not None else "next to the images",
    )  # fmt: skip
    return dicts


def load_sa1b_annotations(json_file: str | os.PathLike) -> tuple[list[dict], dict | None]:
    """The segmentations and the ``image`` entry of one SA-1B JSON.

    Args:
        json_file: path of ``sa_N.json``.

    Returns:
        ``(segmentations, image_info)``: the ``segmentation`` dict (COCO RLE) of every
        annotation, in file order, and the ``image`` entry (None when absent).

    Raises:
        SA1BFormatError: the file is missing, not a regular file (a FIFO is never opened), larger
            than :data:`MAX_ANNOTATION_BYTES`, not JSON, or not in the SA-1B format; the message
            names the file and what was expected.
    """
    problem = regular_file_problem(json_file)
    if problem == "not found":
        raise SA1BFormatError(f"{json_file}: annotation file not found")
    if problem is not None:
        raise SA1BFormatError(f"{json_file}: annotation file is {problem}; expected a JSON file")
    try:
        with open(json_file, encoding="utf-8") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_ANNOTATION_BYTES:
                raise SA1BFormatError(
                    f"{json_file}: annotation file has {size} bytes, more than the "
                    f"{MAX_ANNOTATION_BYTES} an SA-1B JSON may have (MAX_ANNOTATION_BYTES)"
                )
            record = json.load(f)
    except FileNotFoundError as e:
        raise SA1BFormatError(f"{json_file}: annotation file not found") from e
    # ValueError covers JSONDecodeError / UnicodeDecodeError; RecursionError a deeply nested file.
    except (OSError, ValueError, RecursionError) as e:
        if isinstance(e, SA1BFormatError):
            raise
        raise SA1BFormatError(f"{json_file}: cannot read the annotation JSON ({e})") from e
    return _segmentations_of(record, json_file)


def parse_sa1b_annotations(data: bytes, source: str) -> tuple[list[dict], dict | None]:
    """:func:`load_sa1b_annotations` of a JSON held in memory (a member of a tar shard).

    Args:
        data: the UTF-8 bytes of ``sa_N.json``.
        source: the name used in messages, e.g. ``"/data/sa_000000.tar:sa_1.json"``.

    Raises:
        SA1BFormatError: as :func:`load_sa1b_annotations`.
    """
    if len(data) > MAX_ANNOTATION_BYTES:
        raise SA1BFormatError(
            f"{source}: annotation has {len(data)} bytes, more than the {MAX_ANNOTATION_BYTES} an "
            "SA-1B JSON may have (MAX_ANNOTATION_BYTES)"
        )
    try:
        record = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise SA1BFormatError(f"{source}: cannot read the annotation JSON ({e})") from e
    return _segmentations_of(record, source)


def _segmentations_of(record: Any, source: str | os.PathLike) -> tuple[list[dict], dict | None]:
    """The checks of :func:`load_sa1b_annotations` on a parsed JSON value."""
    anns = record.get("annotations") if isinstance(record, dict) else None
    if not isinstance(anns, list):
        raise SA1BFormatError(f"{source}: expected a JSON object with an 'annotations' list")
    segmentations = []
    for i, ann in enumerate(anns):
        seg = ann.get("segmentation") if isinstance(ann, dict) else None
        if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
            raise SA1BFormatError(
                f"{source}: annotations[{i}] needs 'segmentation': "
                "{'size': [h, w], 'counts': ...} (COCO RLE)"
            )
        segmentations.append(seg)
    info = record.get("image")
    return segmentations, info if isinstance(info, dict) else None


def _register(name: str, loader, **metadata: Any) -> None:
    """Register ``loader`` under ``name``, replacing an earlier registration of that name.

    Each time the dataset is loaded, the number of dicts is stored as the metadata field
    ``num_images``: the training mapper bounds its give-up on bad samples with it (see
    :class:`~pixelclip.data.mapper.SA1BDatasetMapper`).
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)

    def load_and_count() -> list[dict[str, Any]]:
        dicts = loader()
        meta = MetadataCatalog.get(name)
        # Metadata refuses to change a field; a re-listing of a changed tree must update it.
        vars(meta).pop("num_images", None)
        meta.num_images = len(dicts)
        return dicts

    DatasetCatalog.register(name, load_and_count)
    MetadataCatalog.get(name).set(**metadata)


def register_sa1b(
    name: str = SA1B_TRAIN,
    root: str | os.PathLike | None = None,
    subset: str | os.PathLike | None = None,
    max_images: int = 0,
    *,
    annotation_root: str | os.PathLike | None = None,
) -> None:
    """Register SA-1B as ``name`` (lazily; re-registering a name replaces it).

    Args:
        name: dataset name for ``DATASETS.TRAIN``.
        root: SA-1B root; None = ``$DETECTRON2_DATASETS/sa1b``, resolved when the dataset is
            loaded (not now).
        subset: optional subset list (see :func:`list_sa1b_images`).
        max_images: cap on the number of images (0 = no cap).
        annotation_root: folder of the JSON files mirroring the image tree; None = next to each
            image. Checked when the dataset is loaded (not now).
    """
    root = os.fspath(root) if root else None
    subset = os.fspath(subset) if subset else None
    annotation_root = os.fspath(annotation_root) if annotation_root else None
    _register(
        name,
        lambda: load_sa1b_dicts(root, subset, max_images, annotation_root=annotation_root),
        root=root or "$DETECTRON2_DATASETS/sa1b",
        annotation_root=annotation_root or "",
        evaluator_type="none",
    )


def register_sa1b_from_config(cfg: CfgNode, name: str = SA1B_TRAIN) -> None:
    """Re-register ``name`` from cfg.DATASETS.SA1B: ROOT, SUBSET, MAX_IMAGES, ANNOTATION_ROOT."""
    register_sa1b(
        name,
        root=cfg.DATASETS.SA1B.ROOT or None,
        subset=cfg.DATASETS.SA1B.SUBSET or None,
        max_images=int(cfg.DATASETS.SA1B.MAX_IMAGES),
        annotation_root=cfg.DATASETS.SA1B.ANNOTATION_ROOT or None,
    )


def register_all_sa1b() -> None:
    """Register "sa1b_train" at ``$DETECTRON2_DATASETS/sa1b`` unless it is registered already."""
    if SA1B_TRAIN not in DatasetCatalog.list():
        register_sa1b(SA1B_TRAIN)


def load_image_folder_dicts(root: str | os.PathLike, max_images: int = 0) -> list[dict[str, Any]]:
    """Dataset dicts of every image under ``root`` (recursively, sorted), for DINO masks.

    Returns:
        dicts with ``file_name`` and ``image_id`` (path relative to ``root`` without suffix);
        the size is left to the mapper, which decodes the image anyway.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no image.
    """
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder {str(path)!r} does not exist")
    # Sub-folders in plain sorted order, files in natural order (the order this listing always had).
    files = [os.path.join(path, rel) for rel in _scan(path, IMAGE_SUFFIXES, folder_key=None)]
    if max_images > 0:
        files = files[:max_images]
    if not files:
        raise FileNotFoundError(f"no image ({', '.join(IMAGE_SUFFIXES)}) found under {str(path)!r}")
    return [
        {
            "file_name": f,
            "image_id": Path(os.path.relpath(f, path)).with_suffix("").as_posix(),
        }
        for f in files
    ]


def register_image_folder(name: str, root: str | os.PathLike, max_images: int = 0) -> None:
    """Register every image under ``root`` as the training dataset ``name`` (lazily).

    Meant for ``INPUT.MASK_SOURCE: "dino"``, where masks are computed online and no annotation
    file is needed.
    """
    root = os.fspath(root)
    _register(
        name, lambda: load_image_folder_dicts(root, max_images), root=root, evaluator_type="none"
    )
