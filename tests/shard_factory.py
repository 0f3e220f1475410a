"""SA-1B release-style tar shards for tests: ``sa_000000.tar`` holding ``sa_N.jpg`` + ``sa_N.json``
pairs (the samples of :func:`data_factory.write_sa1b_folder`, packed with ``tarfile``)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from data_factory import write_sa1b_folder


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def pack(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """Write ``members`` (name, bytes) in this order as an uncompressed tar."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            add_member(tar, name, data)
    return path


def write_sa1b_shards(
    root: str | Path,
    shards: dict[str, int],
    height: int = 64,
    width: int = 64,
    num_masks: int = 6,
    order: str = "pairs",
) -> tuple[list[Path], list[dict]]:
    """``{"sa_000000": 3}`` writes ``root/sa_000000.tar`` with sa_1.jpg, sa_1.json, ... sa_3.json.

    Args:
        order: "pairs" (each image followed by its JSON, as ``tar --sort=name``), "json-first"
            (each JSON before its image) or "images-first" (all images, then all JSONs).

    Returns:
        the shard paths and the samples (:func:`data_factory.write_sample`'s dicts; the extracted
        files stay under ``root/extracted``, the same tree as an extracted release).
    """
    root = Path(root)
    samples = write_sa1b_folder(root / "extracted", shards, height, width, num_masks)
    paths, number = [], 0
    for shard, count in shards.items():
        pairs = []
        for s in samples[number : number + count]:
            image, annotation = Path(s["file_name"]), Path(s["annotation_file"])
            pairs.append(
                ((image.name, image.read_bytes()), (annotation.name, annotation.read_bytes()))
            )
        number += count
        if order == "pairs":
            members = [m for image, annotation in pairs for m in (image, annotation)]
        elif order == "json-first":
            members = [m for image, annotation in pairs for m in (annotation, image)]
        elif order == "images-first":
            members = [image for image, _ in pairs] + [annotation for _, annotation in pairs]
        else:
            raise ValueError(f"unknown order {order!r}")
        paths.append(pack(root / f"{shard}.tar", members))
    return paths, samples
