"""The yardstick of achieved GFLOP/s: a square matmul (``matmul:{fp32,bf16,fp16}``), and the
model benchmarks' measurement against it (and, on a GPU, against the datasheet peak)."""

from __future__ import annotations

from .common import count_flops, peak_rss_mb, summary, timed_runs
from .device import mfu_fields, peak_memory_fields, reset_peak_memory


def bench_matmul(spec: str, s: dict, args) -> dict:
    """GFLOP/s of an n x n matmul: the faster of ``a @ b`` and ``F.linear(a, b)`` (= a @ b.T),
    which take different kernels for bf16 on CPU (oneDNN's for linear layers). On a GPU n is
    at least 4096 (a 1024 matmul does not fill one)."""
    import torch
    import torch.nn.functional as F

    precision = spec.split(":")[1]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    device = getattr(args, "device", "cpu")
    n = s["matmul_n"] if device == "cpu" else max(s["matmul_n"], 4096)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device=device, dtype=dtype) for _ in range(2))
    flops = count_flops(lambda: a @ b)
    matmul = summary(timed_runs(lambda: a @ b, args.warmup - 1, args.repeats, device))
    linear = summary(timed_runs(lambda: F.linear(a, b), args.warmup, args.repeats, device))
    out = min(matmul, linear, key=lambda r: r["median_s"])
    out.update(
        gflop=flops / 1e9,
        gflops=flops / 1e9 / out["median_s"],
        gflops_by_kernel={"matmul": flops / 1e9 / matmul["median_s"],
                          "linear": flops / 1e9 / linear["median_s"]},
        settings={"n": n, "precision": precision, "device": device},
    )  # fmt: skip
    if device == "cuda":  # the yardstick's own fraction of the datasheet peak
        out.update(mfu_fields({"gflops_achieved": out["gflops"]}, device, precision, args.tf32))
    return out


def time_against_matmul(fn, precision: str, s: dict, args) -> dict:
    """Timed runs of ``fn`` (median, min, max), the peak RSS (and on a GPU the peak of
    torch.cuda.max_memory_allocated over the timed runs), the FLOPs of one more run, the
    achieved GFLOP/s, the same-dtype matmul measured right after in this process (same load,
    same threads) as ``matmul_gflops``, and the MFU (against that matmul on CPU, against the
    datasheet peak on a GPU)."""
    device = args.device
    warmup = max(args.warmup, 3) if args.compile else args.warmup  # compilation, recompilation
    for _ in range(warmup):
        fn()
    reset_peak_memory(device)
    out = summary(timed_runs(fn, 0, args.repeats, device))
    out["peak_rss_mb"] = peak_rss_mb()  # before counting: FlopCounterMode costs memory
    out.update(peak_memory_fields(device))
    flops = count_flops(fn)
    out["matmul_gflops"] = bench_matmul(f"matmul:{precision}", s, args)["gflops"]
    out.update(gflop=flops / 1e9, gflops_achieved=flops / 1e9 / out["median_s"])
    out.update(mfu_fields(out, device, precision, args.tf32, out["matmul_gflops"]))
    return out
