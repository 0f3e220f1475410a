"""The training stream of the SA-1B tar shards: split across processes and data-loader workers,
reshuffled every epoch, resumable at an exact sample position.

Layout of an epoch (pure arithmetic on the per-shard sample counts, see
:func:`~pixelclip.data.sa1b_shards.shard_sample_counts`):

* The shards are put in a random order drawn from ``(seed, epoch)``; the epoch is the N samples
  of the shards in that order, each shard in its own order (tar order).
* There are S = processes x workers streams (one per data-loader worker of every process; one per
  process when ``DATALOADER.NUM_WORKERS`` is 0). Stream s takes the contiguous epoch positions
  ``[s * N // S, (s + 1) * N // S)``: every sample once per epoch, none skipped, the same number
  (+-1) for every stream, whatever the number of shards. A stream reads those samples from the at
  most ``N / S`` shards they lie in, and then goes on with its range of the next epoch (the
  streams are endless, so no process waits for another at an epoch end).
* Worker w of a process makes the batches of iterations w, w + W, w + 2W, ... (PyTorch's
  ``DataLoader`` asks its workers in turn), so after k iterations the stream of worker w has
  given ``batch * len(range(w, k, W))`` samples. ``--resume`` at iteration k starts each stream
  there: the shards before are not opened, the samples before the position in its current shard
  are skipped from the tar headers only (no data read, nothing decoded). The resumed loader's
  first batch comes from its worker 0, so its worker w continues the stream of worker
  ``(w + k) % W``.
* The random augmentations of a sample are drawn from numpy's RNG seeded with
  ``(seed, epoch, position)`` (the RNG state around the call is restored), so they do not depend
  on workers or processes: with ``SEED >= 0`` (or the data seed saved in the checkpoint for
  ``SEED -1``) a resumed run sees the same samples with the same augmentations, with or without
  workers, as long as the number of processes and workers is the same.
* A bad sample (the mapper returns None: logged with ``<shard>:<member>``) keeps its position:
  it is replaced by the next good sample of the stream, mapped once more with the bad position's
  seed, so the positions (and what ``--resume`` computes) never shift. The mapper's give-up
  (``TrainingDataError``) ends a stream that finds no usable sample.

The stream is an ``IterableDataset`` for PyTorch's ``DataLoader``; :func:`build_shard_train_loader`
makes the loader the trainer uses when ``DATASETS.SA1B.SHARDS`` is set (it replaces the
registered "sa1b_train"; the data-loader's sampler settings do not apply).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from .sa1b import printable_path
from .sa1b_shards import list_shards, read_shard, shard_sample_counts

__all__ = ["SA1BShardStream", "epoch_order", "epoch_chunks", "build_shard_train_loader"]

logger = logging.getLogger(__name__)

# File in OUTPUT_DIR that keeps the per-shard sample counts between runs.
COUNTS_FILE = "sa1b_shards.json"


def epoch_order(num_shards: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the shards in ``epoch``: a permutation drawn from ``(seed, epoch)``."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(num_shards)


def epoch_chunks(
    counts: np.ndarray, order: np.ndarray, start: int, stop: int
) -> Iterator[tuple[int, int, int, int]]:
    """The pieces of shards that hold the epoch positions ``[start, stop)``.

    Yields:
        ``(shard, first, end, position)``: samples ``first .. end - 1`` of shard index ``shard``
        are the epoch positions ``position .. position + end - first - 1``.
    """
    sizes = counts[order]
    ends = np.cumsum(sizes)
    j = int(np.searchsorted(ends, start, side="right"))
    while start < stop and j < len(order):
        first = start - int(ends[j] - sizes[j])
        take = min(stop, int(ends[j])) - start
        if take > 0:
            yield int(order[j]), first, first + take, start
            start += take
        j += 1


class SA1BShardStream(torch.utils.data.IterableDataset):
    """Endless stream of mapped training samples of one process (see the module docstring).

    Args:
        shards: shard paths.
        counts: samples per shard (:func:`~pixelclip.data.sa1b_shards.shard_sample_counts`).
        mapper: in-memory dataset dict -> training sample, or None for a bad sample.
        seed: the data seed (``cfg.SEED``, or the one drawn for ``SEED -1``).
        images_per_batch: ``SOLVER.IMS_PER_BATCH``, all processes together.
        rank, world_size: this process and the number of processes.
        reader: ``(shard, start, stop) -> dataset dicts`` (tests replace it).
    """

    def __init__(
        self,
        shards: Sequence[str],
        counts: Sequence[int],
        mapper: Callable[[dict], dict | None],
        *,
        seed: int,
        images_per_batch: int,
        rank: int = 0,
        world_size: int = 1,
        reader: Callable[[str, int, int], Iterator[dict]] = read_shard,
    ):
        if len(shards) != len(counts):
            raise ValueError(f"{len(shards)} shards but {len(counts)} counts")
        if images_per_batch % world_size:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH ({images_per_batch}) must be a multiple of the number of "
                f"processes ({world_size})"
            )
        self.shards = list(shards)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.total = int(self.counts.sum())
        self.mapper = mapper
        # The name detectron2's TrainingSampler uses: DeterministicResumeHook sets it to the
        # seed saved in a checkpoint before the loader starts iterating.
        self._seed = int(seed)
        self.images_per_batch = int(images_per_batch)
        self.batch_size = self.images_per_batch // world_size
        self.rank, self.world_size = int(rank), int(world_size)
        self.reader = reader
        self.start_iter = 0

    def start_at(self, consumed: int) -> None:
        """Resume after ``consumed`` samples of all processes together (iterations x batch).

        Raises:
            ValueError: ``consumed`` is negative or not a multiple of ``images_per_batch``.
        """
        if consumed < 0 or consumed % self.images_per_batch:
            raise ValueError(
                f"start_at({consumed}): expected a non-negative multiple of SOLVER.IMS_PER_BATCH "
                f"({self.images_per_batch})"
            )
        self.start_iter = consumed // self.images_per_batch

    def stream_range(self, stream: int, streams: int) -> tuple[int, int]:
        """Epoch positions ``[lo, hi)`` of stream ``stream`` of ``streams``."""
        return stream * self.total // streams, (stream + 1) * self.total // streams

    def layout(self, worker: int = 0, workers: int = 1) -> tuple[int, int, int]:
        """``(stream, streams, samples already given)`` of data-loader worker ``worker`` of
        ``workers`` of this process after :meth:`start_at`."""
        role = (worker + self.start_iter) % workers  # the worker of the uninterrupted run
        done = self.batch_size * len(range(role, self.start_iter, workers))
        return self.rank * workers + role, self.world_size * workers, done

    def positions(self, stream: int, streams: int, done: int = 0):
        """``(epoch, position, shard, first, end)`` pieces of a stream from sample ``done`` on,
        endlessly: what :meth:`__iter__` reads, without reading."""
        lo, hi = self.stream_range(stream, streams)
        if hi == lo:
            raise ValueError(
                f"the shards hold {self.total} samples, fewer than the {streams} streams "
                "(processes x data-loader workers) sharing them; use fewer workers or more shards"
            )
        epoch, offset = divmod(done, hi - lo)
        while True:
            order = epoch_order(len(self.shards), self._seed, epoch)
            for shard, first, end, position in epoch_chunks(self.counts, order, lo + offset, hi):
                yield epoch, position, shard, first, end
            epoch, offset = epoch + 1, 0

    def _map(self, d: dict, epoch: int, position: int):
        state = np.random.get_state()
        np.random.seed(np.random.SeedSequence([self._seed, epoch, position]).generate_state(1)[0])
        try:
            return self.mapper(d)
        finally:
            np.random.set_state(state)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stream, streams, done = self.layout(worker, workers)
        owed: list[tuple[int, int]] = []  # positions of bad samples waiting for a good one
        for epoch, position, shard, first, end in self.positions(stream, streams, done):
            for i, d in enumerate(self.reader(self.shards[shard], first, end)):
                out = self._map(d, epoch, position + i)
                if out is None:
                    owed.append((epoch, position + i))
                    continue
                for bad_epoch, bad_position in owed:
                    again = self._map(d, bad_epoch, bad_position)
                    yield again if again is not None else out
                owed.clear()
                yield out


def build_shard_train_loader(cfg, mapper: Callable) -> torch.utils.data.DataLoader:
    """The training loader over ``cfg.DATASETS.SA1B.SHARDS`` (see the module docstring).

    Collective in a distributed run (the shard counts are shared). The loader carries what
    :class:`~pixelclip.engine.resume.DeterministicResumeHook` needs: ``resumable_sampler`` (the
    stream: ``start_at`` and the seed), ``data_seed``; ``seeded_dataset`` is None.

    Raises:
        ValueError: DATASETS.TRAIN is not ("sa1b_train",), a sampler other than TrainingSampler is
            configured, or the shards hold fewer samples than there are streams.
        FileNotFoundError: no shard is readable.
    """
    from detectron2.data.build import trivial_batch_collator, worker_init_reset_seed
    from detectron2.utils import comm

    if tuple(cfg.DATASETS.TRAIN) != ("sa1b_train",):
        raise ValueError(
            f"DATASETS.SA1B.SHARDS replaces the dataset 'sa1b_train', but DATASETS.TRAIN is "
            f"{tuple(cfg.DATASETS.TRAIN)}; set DATASETS.TRAIN ('sa1b_train',) or "
            'DATASETS.SA1B.SHARDS ""'
        )
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN!r} does not apply to "
            "DATASETS.SA1B.SHARDS (the shard stream shuffles by itself); use 'TrainingSampler'"
        )
    ignored = [
        k for k in ("ROOT", "SUBSET", "ANNOTATION_ROOT", "MAX_IMAGES") if cfg.DATASETS.SA1B[k]
    ]
    if ignored:
        logger.warning("DATASETS.SA1B.SHARDS is set: DATASETS.SA1B.%s ignored", "/".join(ignored))
    shards = list_shards(cfg.DATASETS.SA1B.SHARDS)
    counts = shard_sample_counts(shards, cache_file=os.path.join(cfg.OUTPUT_DIR, COUNTS_FILE))
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    stream = SA1BShardStream(
        shards,
        counts,
        mapper,
        seed=seed,
        images_per_batch=cfg.SOLVER.IMS_PER_BATCH,
        rank=comm.get_rank(),
        world_size=comm.get_world_size(),
    )
    workers = int(cfg.DATALOADER.NUM_WORKERS)
    streams = comm.get_world_size() * max(workers, 1)
    next(stream.positions(0, streams))  # fails at once when the streams outnumber the samples
    if getattr(mapper, "dataset_size", 0) is None:
        mapper.dataset_size = stream.total  # bounds the mapper's give-up on bad samples
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=stream.batch_size,
        num_workers=workers,
        collate_fn=trivial_batch_collator,
        worker_init_fn=worker_init_reset_seed,
    )
    loader.resumable_sampler = stream
    loader.data_seed = seed
    loader.seeded_dataset = None
    logger.info(
        "SA-1B from %d tar shards (%s ...): %d samples, %d streams (%d processes x %d workers) "
        "of ~%d samples per epoch",
        len(shards), printable_path(shards[0]), stream.total, streams, comm.get_world_size(),
        max(workers, 1), stream.total // streams,
    )  # fmt: skip
    return loader
