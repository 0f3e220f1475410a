"""Exact resumption: ``--resume`` continues the data stream and the random augmentations where an
interrupted run stopped (detectron2 restarts its sampler from the first index)."""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable

import numpy as np
import torch
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import HookBase

logger = logging.getLogger(__name__)

__all__ = [
    "DeterministicResumeHook",
    "ResumableTrainingSampler",
    "SeededMapDataset",
    "build_resumable_train_loader",
]


class ResumableTrainingSampler(TrainingSampler):
    """detectron2's ``TrainingSampler`` whose infinite stream can start at a given position.

    detectron2 restarts the sampler from its first index when training resumes, so a resumed run
    sees other images than an uninterrupted one. :meth:`start_at` skips the indices already
    consumed (cheap: indices only, no image is loaded), so the resumed stream is exactly the
    uninterrupted one. Rank ``r`` of ``w`` reads global positions ``r, r + w, r + 2w, ...``.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: int | None = None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self._skip = 0

    def start_at(self, consumed: int) -> None:
        """Skip the first ``consumed`` indices of the global stream (all ranks together).

        Raises:
            ValueError: ``consumed`` is negative or not a multiple of the number of processes.
        """
        if consumed < 0 or consumed % self._world_size:
            raise ValueError(
                f"start_at({consumed}): expected a non-negative multiple of the number of "
                f"processes ({self._world_size})"
            )
        self._skip = consumed

    def __iter__(self):
        start = self._skip + self._rank
        yield from itertools.islice(self._infinite_indices(), start, None, self._world_size)


class SeededMapDataset(torch.utils.data.Dataset):
    """detectron2's ``MapDataset`` with a replacement draw that ``--resume`` reproduces.

    When ``mapper`` returns None (a bad sample), detectron2 draws another index from a
    ``random.Random(42)`` made once per process and a pool that shrinks with every failure: both
    restart on resume, so a resumed run trains on other replacement samples than an
    uninterrupted one. Here the ``attempt``-th replacement for index ``idx`` is a pure function of
    ``(seed, idx, attempt)``. The mapper bounds the retries (``SA1BDatasetMapper`` raises
    ``TrainingDataError`` after too many unusable samples in a row).

    Args:
        dataset: a map-style dataset of dataset dicts.
        mapper: dataset dict -> training sample, or None to ask for a replacement.
        seed: the data seed (``cfg.SEED``, or the one drawn for ``SEED -1``).
    """

    def __init__(self, dataset, mapper: Callable, seed: int):
        self.dataset = dataset
        self.mapper = mapper
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def replacement(self, idx: int, attempt: int) -> int:
        """The index tried at ``attempt`` (1, 2, ...) after ``idx`` failed."""
        state = np.random.SeedSequence([self.seed, int(idx), int(attempt)]).generate_state(1)
        return int(state[0]) % len(self.dataset)

    def __getitem__(self, idx: int):
        current = int(idx)
        for attempt in itertools.count(1):
            sample = self.mapper(self.dataset[current])
            if sample is not None:
                return sample
            current = self.replacement(idx, attempt)
            if attempt == 3:
                logger.warning("sample %d: 3 replacements failed in a row; still trying", idx)


def build_resumable_train_loader(cfg, mapper: Callable) -> torch.utils.data.DataLoader:
    """``build_detection_train_loader(cfg, mapper)`` with a :class:`ResumableTrainingSampler`.

    With ``DATALOADER.SAMPLER_TRAIN = "TrainingSampler"`` the sampler is seeded with ``cfg.SEED``
    when >= 0; else with a random seed shared by all processes, which
    :class:`DeterministicResumeHook` saves in every checkpoint, so that a resumed process rebuilds
    the same stream either way. Other samplers are built by detectron2 as usual. The sampler (or
    None) and its seed are kept on the loader as ``resumable_sampler`` and ``data_seed``, and
    bad samples are replaced by :class:`SeededMapDataset` (``seeded_dataset``).

    With ``DATASETS.SA1B.SHARDS`` the loader streams the tar shards instead
    (:func:`~pixelclip.data.shard_stream.build_shard_train_loader`); its stream takes the
    sampler's place for the hook.
    """
    from detectron2.data import build_detection_train_loader
    from detectron2.data.build import _train_loader_from_config

    if cfg.DATASETS.get("SA1B", {}).get("SHARDS"):
        from ..data.shard_stream import build_shard_train_loader

        return build_shard_train_loader(cfg, mapper)
    kwargs = {}
    if cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler":
        kwargs = _train_loader_from_config(cfg, mapper=mapper)
        from detectron2.data.common import DatasetFromList
        from detectron2.utils import comm

        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        dataset = kwargs.pop("dataset")
        if isinstance(dataset, list):
            dataset = DatasetFromList(dataset, copy=False)
        mapped = SeededMapDataset(dataset, kwargs.pop("mapper"), seed)
        kwargs["sampler"] = ResumableTrainingSampler(len(mapped), seed=seed)
        loader = build_detection_train_loader(dataset=mapped, mapper=None, **kwargs)
        loader.data_seed = seed
        loader.seeded_dataset = mapped
    else:
        loader = build_detection_train_loader(cfg, mapper=mapper)
    loader.resumable_sampler = kwargs.get("sampler")
    return loader


class DeterministicResumeHook(HookBase):
    """Make ``--resume`` continue training as if it had never stopped.

    * ``before_train``: the sampler skips the ``start_iter * IMS_PER_BATCH`` indices consumed
      before the checkpoint (the trainer's ``start_iter`` is set by ``resume_or_load``).
    * ``before_step``: python's, numpy's and torch's global RNGs are seeded from
      (``seed``, iteration, rank), so the random augmentations of a step (drawn in the main
      process when ``DATALOADER.NUM_WORKERS = 0``) depend only on the iteration, not on how many
      steps this process has run. detectron2 seeds these RNGs once per process instead.

    * The seed is part of the checkpoint (:meth:`state_dict`): a run started with ``SEED -1``
      (a random seed drawn at start, the shipped 10k configs) resumes with the seed it drew.

    Resumed and uninterrupted runs then end with bit-identical weights on the same CPU when
    ``NUM_WORKERS = 0`` (tests/test_reliability.py). With data-loader workers the images are the
    same but their augmentations are drawn from the workers' own RNGs, which restart on resume.

    Args:
        sampler: the training sampler, or None (then only the RNGs are seeded).
        dataset: the loader's :class:`SeededMapDataset`, whose seed follows a restored one.
        images_per_batch: ``SOLVER.IMS_PER_BATCH`` (all processes together).
        seed: base seed (``cfg.SEED``, or the loader's ``data_seed``); negative: the hook does
            nothing.
    """

    def __init__(
        self,
        sampler: ResumableTrainingSampler | None,
        images_per_batch: int,
        seed: int,
        dataset: SeededMapDataset | None = None,
    ):
        self.sampler = sampler
        self.dataset = dataset
        self.images_per_batch = images_per_batch
        self.seed = seed

    def state_dict(self) -> dict:
        return {"data_seed": self.seed} if self.seed >= 0 else {}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("data_seed")
        if saved is None or int(saved) == self.seed:
            return
        logger.info("Resuming with the run's data seed %d (this process drew %d)", saved, self.seed)
        self.seed = int(saved)
        if self.sampler is not None:
            self.sampler._seed = self.seed  # read when the loader starts iterating, after this
        if self.dataset is not None:
            self.dataset.seed = self.seed

    def before_train(self) -> None:
        if self.sampler is not None and self.seed >= 0:
            self.sampler.start_at(self.trainer.start_iter * self.images_per_batch)
            if self.trainer.start_iter:
                logger.info("Resuming the data stream at image %d",
                            self.trainer.start_iter * self.images_per_batch)  # fmt: skip

    def before_step(self) -> None:
        if self.seed < 0:
            return
        from detectron2.utils import comm

        state = np.random.SeedSequence([self.seed, self.trainer.iter, comm.get_rank()])
        step_seed = int(state.generate_state(1)[0])
        random.seed(step_seed)
        np.random.seed(step_seed)
        torch.manual_seed(step_seed)
