#!/usr/bin/env python
"""Benchmarks of PixelCLIP on this machine: training step, inference, data mapper, matmul.

Every benchmark runs in a fresh Python process (so peak RSS values do not mix), warms up, then
reports the median, min and max of ``--repeats`` timed runs. Results, the machine description and
the load average go to one JSON file (``--output``) and a table on stdout. See docs/PERFORMANCE.md.

Benchmark names (``--only`` takes names or prefixes such as ``train:vit``):

- ``train:{vit,convnext}:{base,realistic}:{fp32,bf16}``: one training iteration (forward,
  backward, optimizer step with the full recipe: AdamW groups and gradient clipping) of the real
  architectures with random weights on a synthetic batch of 2 images. "base": images at the CLIP
  resolution (ViT-B/16 320 px, ConvNeXt-B 640 px) with 8 masks each; "realistic": 640 x 640 crops
  (what the mapper produces) with 100 masks each. k = 64, masks on a 256 x 256 grid.
- ``infer:{vit,convnext}:{whole,slide}:{fp32,bf16}``: latency of one ADE20K-sized image (480 x
  640) with the 150 ADE20K classes, after each protocol's own test resize: 640 x 854 for "whole"
  (shortest edge 640), 336 x 448 for "slide" (shortest edge 336: 6 windows of 224, stride 112);
  the one-off vocabulary encoding is timed separately.
- ``mapper:ours`` / ``mapper:yardstick``: samples/s of the training mapper on a generated
  SA-1B-format sample (1500 x 2250 JPEG, 100 RLE masks) and of a straightforward mapper that
  decodes and transforms every mask at full resolution (kept here as the yardstick).
- ``matmul:{fp32,bf16}``: a square matmul, the yardstick of achieved GFLOP/s.
- ``profile:vit:base:{fp32,bf16}`` (only with ``--profile``): time per phase of one training
  step and the top operators of torch.profiler.

Model FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions
and attention, forward and backward; 1 multiply-add = 2 FLOPs) in one more run after the timed
ones. Peak RSS of the training and inference benchmarks is read before that run: under the
counter's dispatch mode a ViT-B/16 training step peaked at 3569 MiB against 3136 MiB without.

Usage:
    python tools/benchmark.py --output benchmark.json               # everything (slow on CPU)
    python tools/benchmark.py --only train:vit:base matmul --repeats 3
    python tools/benchmark.py --quick --output /tmp/quick.json      # tiny models, seconds
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "pixelclip-benchmark/1"
MODELS = ("vit", "convnext")
PRECISIONS = ("fp32", "bf16")
ALL_SPECS = (
    [f"train:{m}:{load}:{p}" for m in MODELS for load in ("base", "realistic") for p in PRECISIONS]
    + [f"infer:{m}:{proto}:{p}" for m in MODELS for proto in ("whole", "slide") for p in PRECISIONS]
    + ["mapper:ours", "mapper:yardstick"]
    + [f"matmul:{p}" for p in PRECISIONS]
)
PROFILE_SPECS = tuple(f"profile:vit:base:{p}" for p in PRECISIONS)

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
# Issue 7's targets: (name, benchmark, field, comparison, limit).
TARGETS = (
    ("train ViT-B/16 fp32 (s)", "train:vit:base:fp32", "median_s", "<=", 8.0),
    ("train ViT-B/16 bf16 (s)", "train:vit:base:bf16", "median_s", "<=", 4.0),
    ("train ViT-B/16 fp32 peak RSS (MB)", "train:vit:base:fp32", "peak_rss_mb", "<=", 3072.0),
    ("train ViT-B/16 bf16 peak RSS (MB)", "train:vit:base:bf16", "peak_rss_mb", "<=", 3072.0),
    ("inference ViT-B/16 fp32 (s)", "infer:vit:whole:fp32", "median_s", "<=", 0.9),
    ("inference ViT-B/16 bf16 (s)", "infer:vit:whole:bf16", "median_s", "<=", 0.5),
    ("mapper speed-up over yardstick", "mapper:ours", "speedup_vs_yardstick", ">=", 3.0),
    ("train fp32 / matmul fp32 GFLOP/s", "train:vit:base:fp32", "matmul_fraction", ">=", 0.35),
    ("train bf16 / matmul bf16 GFLOP/s", "train:vit:base:bf16", "matmul_fraction", ">=", 0.35),
)


# ------------------------------------------------------------------------------------ helpers
def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports ru_maxrss in KB)."""
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def timed_runs(fn, warmup: int, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


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

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
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


# ------------------------------------------------------------------------------ model set-up
def build_cfg(model: str, precision: str, s: dict, quick: bool, opts: list[str] | None = None):
    from detectron2.config import get_cfg

    from pixelclip.checkpoint import merge_config_file
    from pixelclip.config import add_pixelclip_config

    m = s["models"][model]
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    merge_config_file(cfg, REPO / "configs" / m["config"])
    cfg.MODEL.DEVICE = "cpu"
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
    cfg.MODEL.PIXELCLIP.PRECISION = precision
    cfg.MODEL.PIXELCLIP.TEST.PROMPT_ENSEMBLE = s["ensemble"]
    cfg.SEED = 0
    cfg.merge_from_list(list(opts or []))
    return cfg


def synthetic_batch(num_masks: int, size: int, grid: int, seed: int = 0) -> list[dict]:
    """2 random images (size x size) with ``num_masks`` random rectangles each on the grid."""
    import torch

    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(2):
        masks = torch.zeros(num_masks, grid, grid, dtype=torch.bool)
        for j in range(num_masks):
            y, x = torch.randint(0, grid - 2, (2,), generator=g).tolist()
            h, w = torch.randint(2, max(3, grid // 2), (2,), generator=g).tolist()
            masks[j, y : y + h, x : x + w] = True
        valid = torch.ones(grid, grid, dtype=torch.bool)
        valid[: grid // 8, : grid // 8] = False  # a cutout box, as the strong view makes
        image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
        batch.append(
            {
                "image": image,
                "image_strong": image.flip(-1).contiguous(),
                "masks": masks,
                "valid": valid,
                "height": size,
                "width": size,
            }
        )
    return batch


def make_train_step(cfg, num_masks: int, size: int, phases: dict | None = None):
    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from pixelclip.solver import build_optimizer

    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    batch = synthetic_batch(num_masks, size, cfg.MODEL.PIXELCLIP.MASK_RESOLUTION)

    def timed(name, fn):
        start = time.perf_counter()
        with torch.profiler.record_function(name):
            out = fn()
        if phases is not None:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - start
        return out

    def step():
        with EventStorage():
            losses = model(batch)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        timed("backward", loss.backward)
        timed("optimizer step (clip + AdamW)", optimizer.step)

    if phases is not None:
        instrument(model, timed)
    return step


def instrument(model, timed) -> None:
    """Time the phases of the training forward by wrapping methods on the instances."""
    from pixelclip.modeling import meta_arch

    def wrap(owner, attr, name):
        original = getattr(owner, attr)
        setattr(owner, attr, lambda *a, **k: timed(name, lambda: original(*a, **k)))

    wrap(model.teacher, "update", "teacher EMA update")
    wrap(model.teacher, "forward", "teacher forward (weak view)")
    wrap(model.sem_seg_head, "prompt_embeddings", "text tower on k prompts")
    wrap(meta_arch, "cluster_masks", "clustering (pool, Sinkhorn, targets)")
    wrap(model.backbone, "forward", "student forward (strong view)")
    wrap(model.sem_seg_head, "forward", "cost maps + decoder forward")
    wrap(meta_arch, "masked_bce_loss", "loss")


# -------------------------------------------------------------------------------- benchmarks
def bench_train(spec: str, s: dict, args) -> dict:
    _, model, load, precision = spec.split(":")
    size = s["models"][model]["res"] if load == "base" else s["realistic_crop"]
    cfg = build_cfg(model, precision, s, args.quick, args.opts)
    step = make_train_step(cfg, s["masks"][load], size)
    out = summary(timed_runs(step, args.warmup, args.repeats))
    out["peak_rss_mb"] = peak_rss_mb()  # before counting: FlopCounterMode costs memory
    flops = count_flops(step)
    # The yardstick again, right after, in this process: same load, same threads.
    out["matmul_gflops"] = bench_matmul(f"matmul:{precision}", s, args)["gflops"]
    out.update(
        gflop=flops / 1e9,
        gflops_achieved=flops / 1e9 / out["median_s"],
        settings={"model": cfg.MODEL.CLIP.MODEL_NAME, "clip_resolution": cfg.MODEL.CLIP.RESOLUTION,
                  "input_size": size, "images": 2, "masks_per_image": s["masks"][load],
                  "clusters": s["clusters"], "mask_resolution": s["grid"], "precision": precision},
    )  # fmt: skip
    return out


def bench_profile(spec: str, s: dict, args) -> dict:
    import torch

    _, model, load, precision = spec.split(":")
    cfg = build_cfg(model, precision, s, args.quick, args.opts)
    phases: dict[str, float] = {}
    step = make_train_step(cfg, s["masks"][load], s["models"][model]["res"], phases)
    flops, per_module = count_flops(step, by_module=True)  # the warm-up run
    phases.clear()
    start = time.perf_counter()
    step()
    total = time.perf_counter() - start
    phases["other (inputs, interpolation, EventStorage)"] = total - sum(phases.values())
    phases = dict(phases)  # the profiled run below must not add to these
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    self_total = sum(e.self_cpu_time_total for e in events) or 1.0
    top = [
        {"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count,
         "self_fraction": e.self_cpu_time_total / self_total}
        for e in events if not e.key.startswith(("phase", "backward", "optimizer step"))
    ][:20]  # fmt: skip
    modules = {k: v / 1e9 for k, v in per_module.items() if 0 < k.count(".") <= 2 and v > 0}
    return {**summary([total]), "gflop": flops / 1e9, "gflop_by_module": modules,
            "phases_s": phases, "top_ops": top, "settings": {"precision": precision}}  # fmt: skip


def bench_infer(spec: str, s: dict, args) -> dict:
    import torch
    from detectron2.modeling import build_model

    from pixelclip.inference.vocabulary import load_vocabulary

    _, model_key, protocol, precision = spec.split(":")
    cfg = build_cfg(model_key, precision, s, args.quick, args.opts)
    cfg.MODEL.PIXELCLIP.TEST.PROTOCOL = protocol
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    names = load_vocabulary(str(REPO / "pixelclip/data/class_names/ade20k_150.json"))
    model.set_vocabulary(names[: s["num_classes"]])
    start = time.perf_counter()
    model.sem_seg_head.class_embeddings(model.vocabulary)  # cached by the model from now on
    vocabulary_s = time.perf_counter() - start
    g = torch.Generator().manual_seed(0)
    size = s["infer_image_slide" if protocol == "slide" else "infer_image"]
    image = torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8)
    height, width = s["infer_original"]
    inputs = [{"image": image, "height": height, "width": width}]

    def run():
        with torch.no_grad():
            out = model(inputs)[0]["sem_seg"]
        assert out.shape == (len(model.vocabulary), height, width)

    out = summary(timed_runs(run, args.warmup, args.repeats))
    out["peak_rss_mb"] = peak_rss_mb()  # before counting: FlopCounterMode costs memory
    flops = count_flops(run)
    # The yardstick again, right after, in this process: same load, same threads.
    out["matmul_gflops"] = bench_matmul(f"matmul:{precision}", s, args)["gflops"]
    out.update(
        gflop=flops / 1e9,
        gflops_achieved=flops / 1e9 / out["median_s"],
        vocabulary_encoding_s=vocabulary_s,
        settings={"model": cfg.MODEL.CLIP.MODEL_NAME, "protocol": protocol,
                  "image": list(size), "output": [height, width],
                  "classes": len(model.vocabulary), "prompt_ensemble": s["ensemble"],
                  "precision": precision},
    )  # fmt: skip
    return out


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


# -------------------------------------------------------------------------------- the mapper
def write_sa1b_sample(folder: Path, height: int, width: int, num_masks: int, seed: int = 0):
    """One SA-1B-format sample (JPEG + JSON with compressed RLE): random ellipses/rectangles."""
    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    annotations = []
    for i in range(num_masks):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.01, 0.3) * height, rng.uniform(0.01, 0.3) * width
        if i % 2:
            m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        else:
            m = (abs(yy - cy) < ry) & (abs(xx - cx) < rx)
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        rle = {"size": [height, width], "counts": rle["counts"].decode()}
        annotations.append({"id": i, "segmentation": rle, "area": int(m.sum())})
    image = (np.sin(yy / 37)[..., None] * 60 + rng.uniform(60, 190, 3)).astype(np.uint8)
    Image.fromarray(image).save(folder / "sa_1.jpg", quality=90)
    info = {"image_id": 1, "file_name": "sa_1.jpg", "height": height, "width": width}
    (folder / "sa_1.json").write_text(json.dumps({"image": info, "annotations": annotations}))
    return {"file_name": str(folder / "sa_1.jpg"), "annotation_file": str(folder / "sa_1.json"),
            "image_id": "sa_1"}  # fmt: skip


class YardstickMapper:
    """A straightforward mapper: decode every RLE at full resolution with pycocotools, one by
    one, push each full mask through detectron2's transforms, pad, and resize it to the grid
    with PyTorch ``nearest``. Image handling is the real mapper's (shared code), so the
    comparison isolates the mask path."""

    def __init__(self, mapper) -> None:
        self.m = mapper

    def __call__(self, d: dict) -> dict:
        import numpy as np
        import torch
        import torch.nn.functional as F
        from detectron2.data import detection_utils as utils
        from detectron2.data import transforms as T
        from pycocotools import mask as mask_utils

        from pixelclip.data.sa1b import load_sa1b_annotations

        m = self.m
        image = utils.read_image(d["file_name"], format=m.image_format)
        segmentations, _ = load_sa1b_annotations(d["annotation_file"])
        aug_input = T.AugInput(image)
        transforms = m.augmentations(aug_input)
        weak = torch.from_numpy(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        strong, box = weak, None
        if m.strong_augmentation is not None:
            strong, box = m.strong_augmentation(weak)
        (content_h, content_w), (frame_h, frame_w) = weak.shape[-2:], weak.shape[-2:]
        if m.pad_size is not None:
            frame_h, frame_w = max(frame_h, m.pad_size[0]), max(frame_w, m.pad_size[1])
        weak, strong = m._pad(weak, frame_h, frame_w), m._pad(strong, frame_h, frame_w)
        valid = m._valid_grid(content_h, content_w, frame_h, frame_w, box)
        grids = []
        for seg in segmentations:
            counts = seg["counts"]
            rle = {
                "size": seg["size"],
                "counts": counts.encode() if isinstance(counts, str) else counts,
            }
            full = transforms.apply_segmentation(mask_utils.decode(rle))
            framed = np.zeros((frame_h, frame_w), np.uint8)
            framed[: full.shape[0], : full.shape[1]] = full
            grid = F.interpolate(torch.from_numpy(framed)[None, None].float(),
                                 size=(m.mask_resolution,) * 2, mode="nearest")  # fmt: skip
            grids.append(grid[0, 0].numpy() > 0)
        masks = m._select(np.stack(grids) & valid[None])
        return {"image": weak, "image_strong": strong, "masks": torch.from_numpy(masks),
                "valid": torch.from_numpy(valid)}  # fmt: skip


def bench_mapper(spec: str, s: dict, args) -> dict:
    import numpy as np
    import torch
    from detectron2.config import get_cfg

    from pixelclip.checkpoint import merge_config_file
    from pixelclip.config import add_pixelclip_config
    from pixelclip.data.mapper import SA1BDatasetMapper

    cfg = get_cfg()
    add_pixelclip_config(cfg)
    merge_config_file(cfg, REPO / "configs" / "Base-PixelCLIP.yaml")
    cfg.INPUT.MIN_SIZE_TRAIN = (s["mapper_min_size"],)
    cfg.INPUT.CROP.SIZE = (s["mapper_crop"],) * 2
    cfg.MODEL.PIXELCLIP.MASK_RESOLUTION = s["grid"]
    ours = SA1BDatasetMapper(cfg, is_train=True)
    mapper = ours if spec == "mapper:ours" else YardstickMapper(ours)
    if args.sample_dir:
        folder = Path(args.sample_dir)
        d = {"file_name": str(folder / "sa_1.jpg"), "annotation_file": str(folder / "sa_1.json")}
    else:  # a worker started by hand makes its own sample
        tmp = tempfile.TemporaryDirectory(prefix="pixelclip-bench-")
        d = write_sa1b_sample(Path(tmp.name), *s["mapper_image"], s["mapper_masks"])
    np.random.seed(0)
    torch.manual_seed(0)
    out = summary(timed_runs(lambda: mapper(d), args.warmup, args.repeats))
    out["samples_per_s"] = 1.0 / out["median_s"]
    out["settings"] = {"image": list(s["mapper_image"]), "masks": s["mapper_masks"],
                       "min_size_train": s["mapper_min_size"], "crop": s["mapper_crop"],
                       "mask_resolution": s["grid"]}  # fmt: skip
    if spec == "mapper:yardstick":  # the two must produce the same sample
        same = []
        for seed in range(2):
            np.random.seed(seed)
            a = ours(d)
            np.random.seed(seed)
            b = mapper(d)
            same.append(
                all(torch.equal(a[k], b[k]) for k in ("image", "image_strong", "masks", "valid"))
            )
        out["matches_mapper"] = all(same)
    return out


RUNNERS = {"train": bench_train, "infer": bench_infer, "matmul": bench_matmul,
           "mapper": bench_mapper, "profile": bench_profile}  # fmt: skip


# ----------------------------------------------------------------------------- orchestration
def run_worker(spec: str, args) -> dict:
    """Run one benchmark in this process; returns its result dict."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else FULL
    load_before = os.getloadavg()
    try:
        result = RUNNERS[spec.split(":")[0]](spec, settings, args)
    except Exception as e:  # noqa: BLE001 -- a failing benchmark is reported, not fatal
        result = {"error": f"{type(e).__name__}: {e}"}
    finally:
        torch.set_num_threads(threads)  # matters for --in-process runs only
    result.setdefault("peak_rss_mb", peak_rss_mb())
    result.update(name=spec, load_average=[list(load_before), list(os.getloadavg())])
    return result


def run_isolated(spec: str, args) -> dict:
    """Run one benchmark in a fresh interpreter, so that its peak RSS is its own."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", spec,
           "--threads", str(args.threads), "--warmup", str(args.warmup),
           "--repeats", str(args.repeats)]  # fmt: skip
    if args.quick:
        cmd.append("--quick")
    if args.sample_dir:
        cmd += ["--sample-dir", args.sample_dir]
    if args.opts:
        cmd += ["--opts", *args.opts]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(key, str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"name": spec, "error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
    return json.loads(lines[-1])


def add_derived(results: list[dict]) -> None:
    """Achieved GFLOP/s as a fraction of the same-dtype matmul (measured in the benchmark's own
    process right after it; else the ``matmul:*`` benchmark); mapper speed-up."""
    by_name = {r["name"]: r for r in results if "error" not in r}
    for r in by_name.values():
        precision = r.get("settings", {}).get("precision")
        matmul = r.get("matmul_gflops") or by_name.get(f"matmul:{precision}", {}).get("gflops")
        if "gflops_achieved" in r and matmul:
            r["matmul_fraction"] = r["gflops_achieved"] / matmul
    ours, yardstick = by_name.get("mapper:ours"), by_name.get("mapper:yardstick")
    if ours and yardstick:
        ours["speedup_vs_yardstick"] = ours["samples_per_s"] / yardstick["samples_per_s"]


def evaluate_targets(results: list[dict]) -> list[dict]:
    """Issue 7's targets against the results; ``met`` is None when the benchmark did not run."""
    by_name = {r["name"]: r for r in results}
    out = []
    for name, spec, field, op, limit in TARGETS:
        value = by_name.get(spec, {}).get(field)
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        out.append({"target": name, "benchmark": spec, "field": field, "limit": f"{op} {limit}",
                    "value": value, "met": met})  # fmt: skip
    return out


EXTRA_FIELDS = (
    ("samples_per_s", "{:.2f} samples/s"),
    ("gflops", "{:.1f} GFLOP/s"),
    ("gflops_achieved", "{:.1f} GFLOP/s"),
    ("matmul_fraction", "{:.0%} of matmul"),
    ("speedup_vs_yardstick", "x{:.1f} vs yardstick"),
    ("vocabulary_encoding_s", "vocabulary {:.1f} s"),
)


def format_table(report: dict) -> str:
    rows = [f"{'benchmark':28s} {'median':>9s} {'min':>9s} {'max':>9s} {'RSS MB':>8s}  extra"]
    for r in report["results"]:
        if "error" in r:
            rows.append(f"{r['name']:28s} ERROR {r['error'].splitlines()[-1][:80]}")
            continue
        extra = []
        for key, fmt in EXTRA_FIELDS:
            if key in r:
                extra.append(fmt.format(r[key]))
        rows.append(f"{r['name']:28s} {r['median_s']:9.3f} {r['min_s']:9.3f} {r['max_s']:9.3f} "
                    f"{r['peak_rss_mb']:8.0f}  {', '.join(extra)}")  # fmt: skip
    for t in report["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        status = {True: "MET", False: "NOT MET", None: "not run"}[t["met"]]
        rows.append(f"target {t['target']:38s} {t['limit']:>9s}  {value:>8s}  {status}")
    load = report["load_average"]
    rows.append(f"load average (1, 5, 15 min): start {load['start']}, end {load['end']}")
    return "\n".join(rows)


def select_specs(patterns: list[str] | None, profile: bool) -> list[str]:
    known = ALL_SPECS + list(PROFILE_SPECS)
    if not patterns:
        return ALL_SPECS + (list(PROFILE_SPECS) if profile else [])
    chosen = []
    for pattern in patterns:
        hits = [s for s in known if s == pattern or s.startswith(pattern + ":")
                or fnmatch.fnmatch(s, pattern)]  # fmt: skip
        if not hits:
            raise SystemExit(f"--only: unknown benchmark {pattern!r}; choose from {known}")
        chosen += [h for h in hits if h not in chosen]
    if profile:
        chosen += [p for p in PROFILE_SPECS if p not in chosen]
    # matmul first: its GFLOP/s is the yardstick of the others.
    return sorted(chosen, key=lambda s: not s.startswith("matmul"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", nargs="+", metavar="NAME", help="benchmarks or prefixes to run")
    p.add_argument("--profile", action="store_true", help="add the per-phase step profiles")
    p.add_argument("--quick", action="store_true", help="tiny models and sizes (smoke test)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (>= 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per benchmark (>= 1)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--output", help="write the JSON report here")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run every benchmark in this process (faster; peak RSS values then mix)",
    )
    p.add_argument(
        "--opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="config overrides of the train/infer models, e.g. MODEL.CLIP.GRAD_CHECKPOINTING True",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--sample-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for key in ("warmup", "repeats", "threads"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    if len(args.opts) % 2:
        p.error(f"--opts takes KEY VALUE pairs, got {args.opts}")
    return args


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        print(json.dumps(run_worker(args.worker, args)))
        return None
    specs = select_specs(args.only, args.profile)
    load_start = list(os.getloadavg())
    settings = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="pixelclip-bench-") as tmp:
        if any(s.startswith("mapper") for s in specs):
            write_sa1b_sample(Path(tmp), *settings["mapper_image"], settings["mapper_masks"])
            args.sample_dir = tmp
        results = []
        for spec in specs:
            print(f"running {spec} ...", file=sys.stderr, flush=True)
            results.append(run_worker(spec, args) if args.in_process else run_isolated(spec, args))
    add_derived(results)
    report = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.argv[0], *(argv if argv is not None else sys.argv[1:])],
        "settings": {
            "quick": args.quick,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "threads": args.threads,
            "isolated": not args.in_process,
        },  # fmt: skip
        "machine": machine_description(args.threads),
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
        "results": results,
        "targets": evaluate_targets(results),
    }
    print(format_table(report))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
