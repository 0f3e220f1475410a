"""The yardstick of achieved GFLOP/s: a square matmul (``matmul:{fp32,bf16}``), and the model
benchmarks' measurement against it."""

from __future__ import annotations

from .common import count_flops, peak_rss_mb, summary, timed_runs


def bench_matmul(spec: str, s: dict, args) -> dict:
    """GFLOP/s of an n x n matmul: the faster of ``a @ b`` and ``F.linear(a, b)`` (= a @ b.T),
    which take different kernels for bf16 on CPU (oneDNN's for linear layers)."""
    import torch
    import torch.nn.functional as F

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec.split(":")[1]]
    n = s["matmul_n"]
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    flops = count_flops(lambda: a @ b)
    matmul = summary(timed_runs(lambda: a @ b, args.warmup - 1, args.repeats))
    linear = summary(timed_runs(lambda: F.linear(a, b), args.warmup, args.repeats))
    out = min(matmul, linear, key=lambda r: r["median_s"])
    out.update(
        gflop=flops / 1e9,
        gflops=flops / 1e9 / out["median_s"],
        gflops_by_kernel={"matmul": flops / 1e9 / matmul["median_s"],
                          "linear": flops / 1e9 / linear["median_s"]},
        settings={"n": n, "precision": spec.split(":")[1]},
    )  # fmt: skip
    return out


def time_against_matmul(fn, precision: str, s: dict, args) -> dict:
    """Timed runs of ``fn`` (median, min, max), the peak RSS, the FLOPs of one more run, the
    achieved GFLOP/s, and the same-dtype matmul measured right after in this process (same load,
    same threads) as ``matmul_gflops``."""
    out = summary(timed_runs(fn, args.warmup, args.repeats))
    out["peak_rss_mb"] = peak_rss_mb()  # before counting: FlopCounterMode costs memory
    flops = count_flops(fn)
    out["matmul_gflops"] = bench_matmul(f"matmul:{precision}", s, args)["gflops"]
    out.update(gflop=flops / 1e9, gflops_achieved=flops / 1e9 / out["median_s"])
    return out
