"""What every benchmark shares: the settings of the real and the --quick runs, timing, FLOP and
memory counting, the machine description and the benchmarked config."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Sizes of the real settings and of --quick (tiny open_clip models, seconds in total).
FULL = {
    "models": {
        "vit": {"config": "pixelclip_vitb16_sa1b_bs48_10k.yaml", "name": "ViT-B-16", "res": 320},
        "convnext": {
            "config": "pixelclip_convnextb_sa1b_bs48_10k.yaml",
            "name": "convnext_base_w_320",
            "res": 640,
        },
    },
    "masks": {"base": 8, "realistic": 100},
    "realistic_crop": 640,
    "clusters": 64,
    "grid": 256,
    "infer_image": (640, 854),
    "infer_image_slide": (336, 448),
    "infer_original": (480, 640),
    "num_classes": 150,
    "ensemble": "imagenet_select",
    "matmul_n": 1024,
    "mapper_image": (1500, 2250),
    "mapper_masks": 100,
    "mapper_min_size": 1024,
    "mapper_crop": 640,
}
QUICK = {
    "models": {
        "vit": {"config": "pixelclip_vitb16_sa1b_bs48_10k.yaml", "name": "tiny-vit", "res": 64},
        "convnext": {
            "config": "pixelclip_convnextb_sa1b_bs48_10k.yaml",
            "name": "tiny-convnext",
            "res": 64,
        },
    },
    "masks": {"base": 4, "realistic": 12},
    "realistic_crop": 96,
    "clusters": 8,
    "grid": 32,
    "infer_image": (64, 86),
    "infer_image_slide": (64, 86),
    "infer_original": (48, 64),
    "num_classes": 10,
    "ensemble": "single",
    "matmul_n": 128,
    "mapper_image": (150, 225),
    "mapper_masks": 10,
    "mapper_min_size": 96,
    "mapper_crop": 64,
}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports ru_maxrss in KB)."""
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def timed_runs(fn, warmup: int, repeats: int, device: str = "cpu") -> list[float]:
    """Seconds of ``repeats`` calls after ``warmup`` untimed calls (wall clock on CPU, CUDA
    events on a GPU: :func:`.device.timed_runs`)."""
    from .device import timed_runs as device_timed_runs

    return device_timed_runs(fn, warmup, repeats, device)


def summary(times: list[float]) -> dict:
    ordered = sorted(times)
    n = len(ordered)
    median = ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])
    return {"times_s": times, "median_s": median, "min_s": ordered[0], "max_s": ordered[-1]}


def count_flops(fn, by_module: bool = False):
    """FLOPs of one call of ``fn`` (forward and backward ops it dispatches).

    nn.MultiheadAttention's inference fast path is one fused op that the counter cannot see, so
    it is disabled while counting (the timed runs keep it). With ``by_module``, also the FLOPs
    per module (names below the model, e.g. "PixelCLIP.teacher").
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .device import eager_mode

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:  # compiled modules (--compile) run eagerly here, so that the counter sees their ops
        with eager_mode(), FlopCounterMode(display=False) as counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    total = int(counter.get_total_flops())
    if not by_module:
        return total
    return total, {k: int(sum(v.values())) for k, v in counter.get_flop_counts().items()}


def machine_description(threads: int) -> dict:
    import torch

    flags, model = set(), platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    env = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "DNNL_MAX_CPU_ISA")
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "cpu_flags": {f: f in flags for f in wanted},
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "env": {k: os.environ.get(k) for k in env},
        "git_commit": commit,
    }


def build_cfg(
    model: str,
    precision: str,
    s: dict,
    quick: bool,
    opts: list[str] | None = None,
    device: str = "cpu",
):
    """The benchmarked config: ``precision`` "bf16" is the model's own autocast
    (MODEL.PIXELCLIP.PRECISION), "fp16" the training code's AMP switch (SOLVER.AMP.ENABLED:
    fp16 autocast with a GradScaler, as detectron2's AMPTrainer runs it)."""
    from detectron2.config import get_cfg

    from ..checkpoint import merge_config_file
    from ..config import add_pixelclip_config

    m = s["models"][model]
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    merge_config_file(cfg, REPO / "configs" / m["config"])
    cfg.MODEL.DEVICE = device
    cfg.MODEL.CLIP.PRETRAINED = ""  # random weights: timings do not depend on the values
    cfg.MODEL.CLIP.MODEL_NAME = m["name"]
    if quick:
        cfg.MODEL.CLIP.MODEL_CONFIG = str(REPO / "configs" / "clip_models" / f"{m['name']}.json")
        cfg.MODEL.CLIP.FORCE_QUICK_GELU = False
        cfg.MODEL.PIXELCLIP.TEST.FEATURE_RESOLUTION = 16
        cfg.MODEL.PIXELCLIP.TEST.SLIDE_CROP = 64 if model == "convnext" else 32
        cfg.MODEL.PIXELCLIP.TEST.SLIDE_STRIDE = 32 if model == "convnext" else 16
    cfg.MODEL.CLIP.RESOLUTION = m["res"]
    cfg.MODEL.PROMPT.NUM_CLUSTERS = s["clusters"]
    cfg.MODEL.PIXELCLIP.MASK_RESOLUTION = s["grid"]
    cfg.MODEL.PIXELCLIP.PRECISION = "bf16" if precision == "bf16" else "fp32"
    cfg.SOLVER.AMP.ENABLED = precision == "fp16"
    cfg.MODEL.PIXELCLIP.TEST.PROMPT_ENSEMBLE = s["ensemble"]
    cfg.SEED = 0
    cfg.merge_from_list(list(opts or []))
    return cfg
