"""A written ToyWorld in detectron2's catalogs, registered lazily.

Three datasets per world: ``<prefix>_train`` (images with class-agnostic SA-1B-format masks, for
training) and ``<prefix>_dev_sem_seg`` / ``<prefix>_test_sem_seg`` (images with label maps, for
``SemSegEvaluator``). Importing :mod:`pixelclip` registers them with the prefix ``toyworld`` at
:func:`default_toyworld_root` (``$DETECTRON2_DATASETS/toyworld``, else ``datasets/toyworld``),
which is where ``tools/quickstart.py`` (``make demo``) writes its world. The root is read when a
dataset is loaded, never at registration: nothing touches the disk before ``DatasetCatalog.get``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..data.benchmarks import dataset_root
from .world import FORMAT_VERSION, IGNORE_LABEL, TOYWORLD_CLASSES

__all__ = [
    "TOYWORLD_DATASETS",
    "default_toyworld_root",
    "load_toyworld_sem_seg_dicts",
    "load_toyworld_train_dicts",
    "register_all_toyworld",
    "register_toyworld",
]

# The names registered at import (``register_all_toyworld``).
TOYWORLD_DATASETS = ("toyworld_train", "toyworld_dev_sem_seg", "toyworld_test_sem_seg")


def default_toyworld_root() -> Path:
    """``$DETECTRON2_DATASETS/toyworld`` (``datasets/toyworld`` if unset), read at each call."""
    return Path(dataset_root()) / "toyworld"


def _read_meta(root: Path) -> dict[str, Any]:
    path = root / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {root} is not a complete ToyWorld (write it with "
            "pixelclip.toyworld.write_toyworld)"
        )
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {meta.get('format_version')} != {FORMAT_VERSION}")
    return meta


def _list_split(root: Path, split: str, folder: str, key: str, companion) -> list[dict[str, Any]]:
    """Dicts of every PNG in ``root/split/folder`` with ``key`` = ``companion(path)``."""
    size = _read_meta(root)["image_size"]
    dicts = []
    for path in sorted((root / split / folder).glob("*.png")):
        other = companion(path)
        if not other.is_file():
            raise FileNotFoundError(f"{other} missing for image {path}")
        dicts.append({"file_name": str(path), key: str(other), "image_id": path.stem,
                      "height": size, "width": size})  # fmt: skip
    return dicts


def load_toyworld_sem_seg_dicts(root: str | os.PathLike, split: str) -> list[dict[str, Any]]:
    """detectron2 dicts of dev or test: file_name, sem_seg_file_name, image_id, height, width."""
    if split not in ("dev", "test"):
        raise ValueError(f"split {split!r} has no labels; choose from ('dev', 'test')")
    labels = Path(root) / split / "labels"
    return _list_split(Path(root), split, "images", "sem_seg_file_name", lambda p: labels / p.name)


def load_toyworld_train_dicts(root: str | os.PathLike) -> list[dict[str, Any]]:
    """SA-1B-style dicts of the train split: file_name, annotation_file, image_id (the file stem,
    as in ``pixelclip.data.sa1b``), height, width."""
    return _list_split(Path(root), "train", "", "annotation_file", lambda p: p.with_suffix(".json"))


def register_toyworld(root: str | os.PathLike | None = None, prefix: str = "toyworld") -> list[str]:
    """Register ``{prefix}_train`` (SA-1B style) and ``{prefix}_{dev,test}_sem_seg`` lazily.

    Nothing is read until a dataset is requested from ``DatasetCatalog``. Registering a name again
    replaces the old entry (e.g. another root).

    Args:
        root: folder of a world written by :func:`~pixelclip.toyworld.world.write_toyworld`.
            None: :func:`default_toyworld_root`, resolved each time a dataset is loaded (the
            metadata's ``image_root`` / ``sem_seg_root`` record its value at registration).
        prefix: the first part of the three dataset names.

    Returns:
        The registered dataset names.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    fixed = Path(root).expanduser() if root is not None else None

    def resolve() -> Path:
        return fixed if fixed is not None else default_toyworld_root()

    named = resolve()  # for the metadata only; no file is looked at
    entries = {
        f"{prefix}_train": (lambda: load_toyworld_train_dicts(resolve()), named / "train", None)
    }
    for split in ("dev", "test"):
        entries[f"{prefix}_{split}_sem_seg"] = (
            lambda s=split: load_toyworld_sem_seg_dicts(resolve(), s),
            named / split / "images",
            named / split / "labels",
        )
    for name, (loader, image_root, sem_seg_root) in entries.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, loader)
        meta = MetadataCatalog.get(name)
        meta.set(image_root=str(image_root), stuff_classes=list(TOYWORLD_CLASSES))
        if sem_seg_root is not None:
            meta.set(sem_seg_root=str(sem_seg_root), ignore_label=IGNORE_LABEL)
            meta.set(evaluator_type="sem_seg")
    return list(entries)


def register_all_toyworld() -> None:
    """Register :data:`TOYWORLD_DATASETS` at the default root, unless they are registered already
    (called when :mod:`pixelclip` is imported; no disk access)."""
    from detectron2.data import DatasetCatalog

    if not all(name in DatasetCatalog.list() for name in TOYWORLD_DATASETS):
        register_toyworld(None)
