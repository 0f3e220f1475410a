"""What changes when a benchmark runs on a GPU: timing with CUDA events, peak device memory,
mixed precision (autocast, and a GradScaler for fp16 training), channels-last, torch.compile,
and the model FLOP utilisation (MFU) against the GPU's datasheet peak.

Every function takes the device ("cpu" or "cuda") and calls CUDA only for "cuda", so the CPU
runs (and the GPU suite's ``--dry-run``) go through the same code. The CUDA-only lines are
listed in docs/PERFORMANCE.md ("GPU runs").
"""

from __future__ import annotations

import contextlib
import re
import time

# Dense (no structured sparsity) peak TFLOP/s per GPU and math mode, from the vendor's
# datasheets or architecture whitepapers (sparsity figures halved where only those are given).
# fp32: CUDA cores; tf32/bf16/fp16: tensor cores with fp32 accumulation. None = no such mode.
# Matched against torch.cuda.get_device_name() in this order (first match wins).
GPU_PEAKS = (
    # NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100): SXM5, PCIe, NVL columns.
    (r"H100.*NVL", "H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}),
    (r"H100.*PCIe", "H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}),
    (r"H100", "H100 SXM", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5}),
    # NVIDIA A100 Tensor Core GPU datasheet (SXM4 and PCIe share these peaks).
    (r"A100", "A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}),
    # NVIDIA Ampere GA102 GPU architecture whitepaper, RTX A6000 column.
    (r"A6000", "RTX A6000", {"fp32": 38.7, "tf32": 77.4, "bf16": 154.8, "fp16": 154.8}),
    # NVIDIA L40S datasheet (366 / 733 / 733 TFLOPS with sparsity).
    (r"L40S", "L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 366.0, "fp16": 366.0}),
    # NVIDIA Ada GPU architecture whitepaper, GeForce RTX 4090 (fp16/bf16 with fp32 accumulate).
    (r"RTX 4090", "RTX 4090", {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2}),
    # NVIDIA V100 Tensor Core GPU datasheet (SXM2 and PCIe); no tf32/bf16 on Volta.
    (r"V100.*PCI", "V100 PCIe", {"fp32": 14.0, "tf32": None, "bf16": None, "fp16": 112.0}),
    (r"V100", "V100 SXM2", {"fp32": 15.7, "tf32": None, "bf16": None, "fp16": 125.0}),
    # NVIDIA T4 datasheet; no tf32/bf16 on Turing.
    (r"\bT4\b", "T4", {"fp32": 8.1, "tf32": None, "bf16": None, "fp16": 65.0}),
    # NVIDIA A10 datasheet; NVIDIA L4 datasheet (120 / 242 / 242 TFLOPS with sparsity).
    (r"\bA10\b", "A10", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}),
    (r"\bL4\b", "L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}),
)

DTYPES = ("fp32", "bf16", "fp16")


def gpu_peak(device_name: str, precision: str, tf32: bool) -> dict:
    """The datasheet peak of a GPU for a benchmark's precision.

    fp32 runs count against the tf32 peak when TF32 matmuls are allowed (``--tf32``), else
    against the fp32 one. Returns ``{"gpu", "math", "peak_tflops"}``, or ``{"note"}`` when the
    GPU is not in :data:`GPU_PEAKS` or has no such mode (the MFU is then omitted).
    """
    math = "tf32" if precision == "fp32" and tf32 else precision
    for pattern, gpu, peaks in GPU_PEAKS:
        if re.search(pattern, device_name):
            if peaks.get(math) is None:
                return {"note": f"{gpu} has no {math} tensor-core peak; MFU omitted"}
            return {"gpu": gpu, "math": math, "peak_tflops": peaks[math]}
    return {"note": f"GPU {device_name!r} is not in the peak table; MFU omitted"}


def mfu_fields(result: dict, device: str, precision: str, tf32: bool, matmul_gflops=None):
    """MFU of a result holding ``gflops_achieved``: against the GPU's datasheet peak on CUDA,
    against the same-dtype matmul measured on this machine on CPU."""
    achieved = result.get("gflops_achieved")
    if achieved is None:
        return {}
    if device != "cuda":
        if not matmul_gflops:
            return {}
        return {"mfu": achieved / matmul_gflops, "mfu_against": "measured matmul (CPU)"}
    import torch

    peak = gpu_peak(torch.cuda.get_device_name(), precision, tf32)
    if "peak_tflops" not in peak:
        return {"mfu_note": peak["note"]}
    against = f"{peak['gpu']} {peak['math']} peak {peak['peak_tflops']} TFLOP/s"
    return {"mfu": achieved / (peak["peak_tflops"] * 1e3), "mfu_against": against}


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed_runs(fn, warmup: int, repeats: int, device: str = "cpu") -> list[float]:
    """Seconds of ``repeats`` calls after ``warmup`` untimed ones: wall clock on CPU; CUDA
    events around each call on a GPU (queued work finished before the first one)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    if device == "cuda":
        import torch

        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return times
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_memory_fields(device: str) -> dict:
    """``peak_cuda_mb``: torch.cuda.max_memory_allocated since the last reset (MiB); {} on CPU
    (the CPU's figure is the process's peak RSS)."""
    if device != "cuda":
        return {}
    import torch

    return {"peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20,
            "peak_cuda_reserved_mb": torch.cuda.max_memory_reserved() / 2**20}  # fmt: skip


def configure_tf32(device: str, enabled: bool) -> None:
    """TF32 matmuls and convolutions on (``--tf32``) or off (exact fp32, the default here)."""
    if device == "cuda":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def autocast(device: str, precision: str):
    """fp16 autocast around a call (the model's own bf16 autocast is MODEL.PIXELCLIP.PRECISION,
    fp32 needs none)."""
    if precision != "fp16":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device, dtype=torch.float16)


def grad_scaler(device: str, precision: str):
    """A torch.amp.GradScaler for fp16 training (as detectron2's AMPTrainer uses), else None."""
    if precision != "fp16":
        return None
    import torch

    return torch.amp.GradScaler(device)


def prepare_model(model, device: str, channels_last: bool, compile_backend: str | None):
    """channels-last parameters (4-D ones; the decoder makes its activations channels-last
    itself) and torch.compile of the three heavy modules in place (student backbone, teacher
    image tower, head), so that the state-dict keys stay those of the model."""
    import torch

    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile_backend:
        for name in ("backbone", "teacher", "sem_seg_head"):
            module = getattr(model, name, None)
            if module is not None:
                module.compile(backend=compile_backend)
    return model


def eager_mode():
    """A context that runs compiled modules eagerly (FLOP counting sees the plain ops)."""
    import torch

    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance else contextlib.nullcontext()
