"""SA-1B read straight from its release tar shards (``DATASETS.SA1B.SHARDS``).

SA-1B is released as ~1000 tar files of ~10 GB (``sa_000000.tar`` ...), each holding ~11k images
``sa_N.jpg`` with their annotations ``sa_N.json``. This module lists the shards, counts their
samples and reads a range of samples of one shard; :mod:`pixelclip.data.shard_stream` splits the
shards across processes and data-loader workers and feeds the samples to the usual training
mapper (:class:`~pixelclip.data.mapper.SA1BDatasetMapper`, which takes the member bytes).

Why webdataset, and not its indexed variant wids. The shards are streamed: every process reads
its shards front to back, each byte once, which is what network file systems and disks serve
best (wids reads samples in random order through an index built per shard beforehand, a seek per
sample over 10 GB files; it is also not part of webdataset 1.x). Exact ``--resume`` needs no
random access: the position of every sample in an epoch is arithmetic on the per-shard sample
counts (the shards already done are skipped without being opened), and inside the one shard where
a stream stops, the samples before the position are skipped by reading tar headers only (seeking
over the member data, decoding nothing). From webdataset come the shard-spec syntax
(``expand_urls``: braces, ``::``-separated lists) and the sample-key rule (``base_plus_ext``: the
member name up to the first dot of its base name, so ``sa_1.jpg`` and ``sa_1.json`` are the
sample "sa_1", as in every webdataset pipeline); the member loop is ours because webdataset's
``tar_file_iterator`` reads every member's bytes (skipping means reading), has no size limit
before reading, and groups only adjacent members.

Samples. A sample is completed when both its image (``.jpg``, ``.jpeg``, ``.png``, ``.webp``) and
its ``.json`` member have been seen, in any order and not necessarily adjacent (only the header of
a member waiting for its pair is kept); samples are numbered in the order they complete. Members
with other suffixes are ignored. At the end of a shard, a member still waiting for its pair is a
bad sample ("no .json"). The count of a shard (:func:`scan_shard`) and the reading
(:func:`read_shard`) run the same loop, so the numbering agrees.

Bad input never stops training: a truncated shard, a member without its pair, a member larger
than :data:`MAX_MEMBER_BYTES`, an unreadable file or a corrupt header give a warning naming the
shard and the member, and the sample becomes a dict with a ``bad_sample`` reason that the mapper
logs and skips (the stream then uses the next good sample for that position, see
:mod:`~pixelclip.data.shard_stream`). A corrupt image or JSON member is found by the mapper, whose
message names ``<shard>:<member>``. Files are checked with ``os.stat`` before being opened (a FIFO
named like a shard is never opened).

webdataset is imported only when shards are used (``pip install -e ".[shards]"``).
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..checkpoint.safe_io import write_atomically
from .sa1b import MAX_ANNOTATION_BYTES, _natural_key, printable_path, regular_file_problem

__all__ = [
    "MAX_MEMBER_BYTES",
    "ShardScan",
    "list_shards",
    "scan_shard",
    "read_shard",
    "shard_sample_counts",
]

logger = logging.getLogger(__name__)

# Suffixes (lower case) of the image member of a sample.
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
# A member larger than this is refused from its header, before reading (an SA-1B JPEG has ~0.5 MB,
# its JSON a few MB).
MAX_MEMBER_BYTES = MAX_ANNOTATION_BYTES
# Version of the sample-count cache file (``sa1b_shards.json`` in OUTPUT_DIR).
_CACHE_VERSION = 1
# Threads of one process counting shards (the work is reading tar headers).
_SCAN_THREADS = 8


def _webdataset():
    try:
        import webdataset
    except ImportError as e:
        raise ImportError(
            "DATASETS.SA1B.SHARDS needs webdataset: pip install -e '.[shards]' (or pip install "
            "webdataset)"
        ) from e
    return webdataset


# ------------------------------------------------------------------------------------- listing
def list_shards(spec: str) -> list[str]:
    """The shard files named by ``spec``, as absolute paths, in order, without duplicates.

    Args:
        spec: entries joined by ``::``, each a brace pattern (``/data/sa_{000000..000999}.tar``),
            a tar file, a folder (every ``*.tar`` in it, natural order) or a ``.txt`` file with one
            such entry per line (``#`` starts a comment).

    Raises:
        FileNotFoundError: no entry names an existing shard.
    """
    expand = _webdataset().shardlists.expand_urls
    paths: list[str] = []
    for entry in expand(spec.strip()):
        entry = entry.strip()
        if not entry:
            continue
        if entry.endswith(".txt") and os.path.isfile(entry):
            here = os.path.dirname(os.path.abspath(entry))  # relative lines: from the list's folder
            with open(entry, encoding="utf-8") as f:
                for line in f:
                    line = line.split("#", 1)[0].strip()
                    paths += [os.path.join(here, p) for p in expand(line)] if line else []
        elif os.path.isdir(entry):
            names = sorted((n for n in os.listdir(entry) if n.endswith(".tar")), key=_natural_key)
            paths += [os.path.join(entry, n) for n in names]
        else:
            paths.append(entry)
    unique = list(dict.fromkeys(os.path.abspath(os.path.expanduser(p)) for p in paths))
    if len(unique) < len(paths):
        twice = len(paths) - len(unique)
        logger.warning("%d shards are named twice in %r; each is read once", twice, spec)
    missing = [p for p in unique if regular_file_problem(p) is not None]
    if len(missing) == len(unique):
        example = ""
        if missing:
            example = f" (e.g. {printable_path(missing[0])}: {regular_file_problem(missing[0])})"
        raise FileNotFoundError(
            f"DATASETS.SA1B.SHARDS {spec!r} names no readable tar file{example}"
        )
    if missing:
        logger.warning(
            "%d of %d shards are missing or not regular files and are left out, e.g. %s (%s)",
            len(missing), len(unique), ", ".join(printable_path(p) for p in missing[:3]),
            regular_file_problem(missing[0]),
        )  # fmt: skip
    gone = set(missing)
    return [p for p in unique if p not in gone]


# ------------------------------------------------------------------------ the member/sample loop
@dataclass
class _Sample:
    key: str
    image: tarfile.TarInfo | None = None
    annotation: tarfile.TarInfo | None = None
    problem: str | None = None  # why the sample is bad, known from the headers


class _ShardSamples:
    """Iterates over the samples of an open shard in completion order (headers only).

    After the iteration, ``error`` says why the shard ended early (None when it ended normally)
    and ``last_member`` names the last member whose header was read.
    """

    def __init__(self, tar: tarfile.TarFile, shard: str):
        self.tar, self.shard = tar, shard
        self.error: str | None = None
        self.last_member: str | None = None

    def _members(self) -> Iterator[tuple[tarfile.TarInfo, str, str]]:
        split = _webdataset().tariterators.base_plus_ext
        while True:
            info = self.tar.next()
            if info is None:
                return
            self.tar.members.clear()  # tarfile keeps every header otherwise
            self.last_member = info.name
            if not info.isreg():
                continue
            key, suffix = split(info.name)
            if key is not None:
                yield info, key, suffix.lower()

    def __iter__(self) -> Iterator[_Sample]:
        pending: dict[str, _Sample] = {}
        try:
            for info, key, suffix in self._members():
                if suffix in IMAGE_SUFFIXES:
                    slot = "image"
                elif suffix == "json":
                    slot = "annotation"
                else:
                    continue
                sample = pending.get(key)
                if sample is not None and getattr(sample, slot) is not None:
                    # A second image (or JSON) of a key before its pair: the first is alone.
                    del pending[key]
                    sample.problem = f"{self._unpaired(sample)} before the next {info.name}"
                    yield sample
                    sample = None
                if sample is None:
                    sample = pending[key] = _Sample(key)
                setattr(sample, slot, info)
                if sample.image is not None and sample.annotation is not None:
                    del pending[key]
                    if max(sample.image.size, sample.annotation.size) > MAX_MEMBER_BYTES:
                        big = max((sample.image, sample.annotation), key=lambda m: m.size)
                        sample.problem = (
                            f"member {big.name} has {big.size} bytes, more than the "
                            f"{MAX_MEMBER_BYTES} a sample member may have (MAX_MEMBER_BYTES)"
                        )
                    yield sample
            self._check_end()
        except (tarfile.TarError, OSError, EOFError) as e:
            self.error = f"{type(e).__name__}: {e}"
        for sample in pending.values():
            sample.problem = self._unpaired(sample) + (
                " (the shard ends early)" if self.error else ""
            )
            yield sample

    @staticmethod
    def _unpaired(sample: _Sample) -> str:
        member = sample.image or sample.annotation
        return f"member {member.name} has no {'.json' if sample.annotation is None else 'image'}"

    def _check_end(self) -> None:
        """tarfile stops silently at a corrupt header after the first member: the bytes after the
        last member must be the end-of-archive zeros."""
        f = self.tar.fileobj
        f.seek(self.tar.offset)
        rest = f.read(tarfile.BLOCKSIZE)
        if rest.strip(b"\0"):
            raise tarfile.ReadError(f"invalid tar header at byte {self.tar.offset}")


def _open(shard: str) -> tuple[tarfile.TarFile | None, str | None]:
    problem = regular_file_problem(shard)
    if problem is not None:
        return None, problem
    try:
        return tarfile.open(shard, mode="r:"), None
    except (tarfile.TarError, OSError) as e:
        return None, f"not a readable tar file ({e})"


@dataclass(frozen=True)
class ShardScan:
    """What counting a shard found: ``samples`` (its sample count, bad samples included) and
    ``problem`` (why part of it is unusable, or None)."""

    samples: int
    problem: str | None = None


def scan_shard(shard: str) -> ShardScan:
    """Count the samples of one shard by reading its tar headers (no member data)."""
    tar, problem = _open(shard)
    if tar is None:
        return ShardScan(0, problem)
    with tar:
        samples = _ShardSamples(tar, shard)
        count = sum(1 for _ in samples)
    if samples.error:
        problem = f"unreadable after member {samples.last_member} ({samples.error})"
    return ShardScan(count, problem)


# --------------------------------------------------------------------------------------- reading
def _read(f, member: tarfile.TarInfo) -> bytes:
    f.seek(member.offset_data)
    data = f.read(member.size)
    if len(data) != member.size:
        raise EOFError(f"member {member.name} is truncated ({len(data)} of {member.size} bytes)")
    return data


def read_shard(shard: str, start: int, stop: int) -> Iterator[dict]:
    """Samples ``start`` .. ``stop - 1`` of a shard, as in-memory dataset dicts for the mapper.

    The samples before ``start`` are skipped by reading headers only, and nothing after sample
    ``stop - 1`` is read. Exactly ``stop - start`` dicts are yielded: when the shard holds fewer
    samples than counted (it ended early or changed since it was counted), the missing ones are
    bad samples, so the positions of later samples do not move.

    Yields:
        ``{"file_name": "<shard>:<image member>", "annotation_file": "<shard>:<json member>",
        "image_id": key, "image_bytes", "annotation_bytes"}``, or for a bad sample
        ``{"file_name", "image_id", "bad_sample": reason}`` (the reason names shard and member).
    """
    name = printable_path(shard)
    position = 0
    tar, problem = _open(shard)
    if tar is not None:
        with tar:
            samples = _ShardSamples(tar, shard)
            for sample in samples:
                if position >= stop:
                    break
                if position >= start:
                    yield _sample_dict(tar.fileobj, sample, name)
                position += 1
        if samples.error and position < stop:
            problem = f"unreadable after member {samples.last_member} ({samples.error})"
    if position < stop:
        missing = stop - max(position, start)
        reason = problem or "holds fewer samples than when it was counted (changed since?)"
        logger.warning("shard %s: %s; %d samples of it are skipped", name, reason, missing)
        for i in range(max(position, start), stop):
            yield {"file_name": f"{name}:#{i}", "image_id": f"#{i}",
                   "bad_sample": f"{name}: sample {i}: the shard {reason}"}  # fmt: skip


def _sample_dict(f, sample: _Sample, shard: str) -> dict:
    member = sample.image or sample.annotation
    d = {"file_name": f"{shard}:{member.name}", "image_id": os.path.basename(sample.key)}
    if sample.annotation is not None:
        d["annotation_file"] = f"{shard}:{sample.annotation.name}"
    if sample.problem:
        d["bad_sample"] = f"{shard}: {sample.problem}"
        return d
    try:
        d["image_bytes"] = _read(f, sample.image)
        d["annotation_bytes"] = _read(f, sample.annotation)
    except (OSError, EOFError) as e:
        d = {k: v for k, v in d.items() if not k.endswith("_bytes")}
        d["bad_sample"] = f"{shard}: {e}"
    return d


# -------------------------------------------------------------------------------------- counting
def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _read_cache(cache_file: str | None) -> dict:
    if not cache_file or not os.path.isfile(cache_file):
        return {}
    try:
        with open(cache_file, encoding="utf-8") as f:
            cache = json.load(f)
        if cache.get("version") == _CACHE_VERSION and isinstance(cache.get("shards"), dict):
            return cache["shards"]
    except (OSError, ValueError, AttributeError) as e:
        logger.warning("ignoring the shard-count cache %s: %s", cache_file, e)
    return {}


def _write_cache(cache_file: str, entries: dict) -> None:
    text = json.dumps({"version": _CACHE_VERSION, "shards": entries}, indent=0).encode("utf-8")
    write_atomically(cache_file, lambda f: f.write(text))


def shard_sample_counts(shards: Sequence[str], cache_file: str | None = None) -> list[int]:
    """The sample count of every shard (:func:`scan_shard`), the same in every process.

    Counts recorded in ``cache_file`` for a shard of the same size and modification time are
    reused; the other shards are counted by all processes together (each takes every n-th, with
    a few threads) and the cache is rewritten by the main process. Collective: every process of a
    distributed run must call it with the same shards. Problems found are logged (per shard,
    naming it).
    """
    from detectron2.utils import comm

    cached = _read_cache(cache_file)
    stats = {s: _stat(s) for s in shards}
    known = {
        s: cached[s]
        for s in shards
        if stats[s] is not None
        and isinstance(cached.get(s), dict)
        and cached[s].get("stat") == stats[s]
    }
    wanted = set().union(*comm.all_gather([s for s in shards if s not in known]))
    todo = [s for s in shards if s in wanted]
    mine = todo[comm.get_rank() :: comm.get_world_size()]
    if todo and comm.is_main_process():
        logger.info("Counting the samples of %d shards (tar headers only) in %d processes",
                    len(todo), comm.get_world_size())  # fmt: skip
    with ThreadPoolExecutor(max_workers=max(1, min(_SCAN_THREADS, len(mine)))) as pool:
        scans = dict(zip(mine, pool.map(scan_shard, mine)))
    found = {
        s: {"stat": stats[s], "samples": r.samples, "problem": r.problem} for s, r in scans.items()
    }
    for part in comm.all_gather(found):
        known.update(part)
    # The main process's view decides, so that every process uses the same counts.
    entries = comm.all_gather({s: known[s] for s in shards})[0]
    for s in shards:
        if entries[s].get("problem") and comm.is_main_process():
            logger.warning("shard %s: %s", printable_path(s), entries[s]["problem"])
    if cache_file and todo and comm.is_main_process():
        try:
            _write_cache(cache_file, {**cached, **{s: e for s, e in entries.items() if e["stat"]}})
        except OSError as e:
            logger.warning("cannot write the shard-count cache %s: %s", cache_file, e)
    return [int(entries[s]["samples"]) for s in shards]
