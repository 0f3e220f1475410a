"""Sinkhorn over 2 gloo processes: equals the single-process result; an empty rank never hangs.

One 2-process job (spawned once for the module, ~5 s) runs every scenario; each rank saves its
outputs to a file and the tests compare them with single-process computations done here. The
process group and every collective have a timeout, and the parent joins with a deadline, so a
deadlock fails the test instead of hanging the suite.
"""

import datetime
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import assert_close_to_float64
from test_clustering import naive_sinkhorn

from pixelclip.modeling.clustering import cluster_masks, sinkhorn

WORLD_SIZE = 2
COLLECTIVE_TIMEOUT_S = 30
JOIN_DEADLINE_S = 90
NUM_CLUSTERS = 5


def _inputs():
    g = torch.Generator().manual_seed(0)
    logits = 100 * (2 * torch.rand(13, NUM_CLUSTERS, generator=g) - 1)
    features = torch.randn(2, 8, 4, 4, generator=g)
    prompts = torch.randn(NUM_CLUSTERS, 8, generator=g)
    masks = [torch.rand(4, 32, 32, generator=g) > 0.6, torch.rand(3, 32, 32, generator=g) > 0.6]
    return logits, features, prompts, masks


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    try:
        logits, features, prompts, masks = _inputs()
        results = {}
        # (b) masks split 7 / 6 between the ranks.
        results["split"] = sinkhorn(logits[:7] if rank == 0 else logits[7:], iters=3)
        # (a) rank 1 has no masks at all.
        results["one_empty"] = sinkhorn(logits if rank == 0 else logits[:0], iters=3)
        # (a) end to end: rank 1's images have no masks.
        empty = [m[:0] for m in masks]
        targets, covered, stats = cluster_masks(
            features, masks if rank == 0 else empty, prompts, mask_resolution=16
        )
        results["targets"], results["covered"] = targets, covered
        results["num_masks"] = stats["num_masks"]
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("sinkhorn_dist"))
    context = mp.start_processes(
        _worker, args=(_free_port(), out_dir), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + JOIN_DEADLINE_S
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"2-process Sinkhorn did not finish within {JOIN_DEADLINE_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD_SIZE)]


def test_split_equals_single_process(rank_results):
    logits = _inputs()[0]
    assert not dist.is_initialized()
    expected = sinkhorn(logits, iters=3)
    got = torch.cat([rank_results[0]["split"], rank_results[1]["split"]])
    assert_close_to_float64(got, torch.from_numpy(naive_sinkhorn(logits, 3)), expected)


def test_rank_without_masks_finishes(rank_results):
    logits, features, prompts, masks = _inputs()
    assert rank_results[1]["one_empty"].shape == (0, NUM_CLUSTERS)
    expected64 = torch.from_numpy(naive_sinkhorn(logits, 3))
    assert_close_to_float64(rank_results[0]["one_empty"], expected64, sinkhorn(logits, iters=3))

    targets, covered, _ = cluster_masks(features, masks, prompts, mask_resolution=16)
    assert torch.equal(rank_results[0]["targets"], targets)
    assert torch.equal(rank_results[0]["covered"], covered)
    assert rank_results[1]["num_masks"].item() == 0
    assert not rank_results[1]["targets"].any() and not rank_results[1]["covered"].any()
