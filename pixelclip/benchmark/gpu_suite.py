"""The first GPU hour in one command (``tools/benchmark.py --gpu-suite``): in a few minutes on
one GPU, real training runs, a CPU-vs-GPU equality check and the benchmarks, into one JSON.

Steps (each timed, a failing step is recorded and the next one runs):

1. ``environment``: torch, CUDA, the GPU's name and its entry in the peak table.
2. ``data``: synthetic SA-1B-format samples (JPEG + RLE JSON) in a temporary folder.
3. ``train:quick``: ``tools/train_net.py`` with configs/quick_schedules/pixelclip_tiny_vit_cpu.yaml
   on the GPU, reading those samples (the whole training stack: loader, mapper, trainer hooks).
4. ``train:vitb16``: ``tools/train_net.py`` with configs/pixelclip_vitb16_sa1b_bs48_10k.yaml at
   12 images per GPU (the paper's 48 on 4 GPUs), random-weight ViT-B/16 from open_clip's own
   model config (MODEL.CLIP.PRETRAINED ""; nothing is downloaded). Seconds per iteration from
   the trainer's metrics.json.
5. ``equality``: the same seeded tiny model on CPU and on the GPU (TF32 off): inference scores,
   and one training step's loss and gradients, within a tolerance derived from the fp32 error of
   the CPU computation against a float64 copy (:func:`close_to_float64`).
6. ``benchmarks``: matmul, the ViT-B/16 training step at 12 images (with the MFU against the
   datasheet peak), inference whole and slide, and a new vocabulary, in each ``--dtype``.

``--dry-run`` runs all of it on the CPU with tiny sizes (the quick config's tiny model in place of
ViT-B/16, 2 iterations, the CPU as the "GPU" of the equality check): every code path but the
CUDA calls. The JSON (``--output``, default ``gpu_suite.json``) holds every step's result.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import datetime
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import FULL, QUICK, REPO, build_cfg, machine_description

logger = logging.getLogger(__name__)

SCHEMA = "pixelclip-gpu-suite/1"
BUDGET_S = 480.0  # the suite should fit in 8 minutes on one GPU
QUICK_CONFIG = REPO / "configs" / "quick_schedules" / "pixelclip_tiny_vit_cpu.yaml"
VITB_CONFIG = REPO / "configs" / "pixelclip_vitb16_sa1b_bs48_10k.yaml"
FLOAT32_EPS = 2.0**-23

# Sizes of the real suite and of --dry-run.
REAL = {"samples": 16, "image": (1500, 2250), "masks": 100, "quick_iters": 20, "vitb_iters": 30,
        "vitb_batch": 12, "repeats": 5}  # fmt: skip
DRY = {"samples": 3, "image": (80, 120), "masks": 6, "quick_iters": 2, "vitb_iters": 2,
       "vitb_batch": 2, "repeats": 1}  # fmt: skip
# The dry run's stand-in for ViT-B/16 in the vitb16 training run: the quick config's tiny model.
DRY_VITB_OPTS = ["MODEL.CLIP.MODEL_NAME", "tiny-vit", "MODEL.CLIP.MODEL_CONFIG",
                 str(REPO / "configs" / "clip_models" / "tiny-vit.json"),
                 "MODEL.CLIP.FORCE_QUICK_GELU", "False", "MODEL.CLIP.RESOLUTION", "64",
                 "MODEL.PROMPT.NUM_CLUSTERS", "8", "MODEL.PIXELCLIP.MASK_RESOLUTION", "32",
                 "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "256",
                 "INPUT.CROP.SIZE", "(64, 64)"]  # fmt: skip


def close_to_float64(actual, ref64, fp32_ref, factor: float = 4.0, terms: int = 1) -> dict:
    """Whether ``actual`` equals ``ref64`` up to float32 rounding: the error allowed is
    ``factor * (max|fp32_ref - ref64| + terms * eps32 * max|ref64|)``, i.e. ``factor`` times the
    error of the fp32 reference computation (here: the CPU) plus a floor of ``terms`` epsilons
    of the largest value (the rule of the tests' ``assert_close_to_float64``)."""
    actual, ref64, fp32_ref = (t.detach().cpu().double() for t in (actual, ref64, fp32_ref))
    scale = float(ref64.abs().max()) if ref64.numel() else 0.0
    ref_err = float((fp32_ref - ref64).abs().max()) if ref64.numel() else 0.0
    err = float((actual - ref64).abs().max()) if ref64.numel() else 0.0
    tol = factor * (ref_err + terms * FLOAT32_EPS * scale)
    return {"max_abs_error": err, "tolerance": tol, "cpu_fp32_error": ref_err, "scale": scale,
            "ok": err <= tol}  # fmt: skip


def write_samples(root: Path, sizes: dict) -> Path:
    """``root/sa1b/sa_000000/sa_N.{jpg,json}``: the release layout the sa1b_train dataset reads."""
    from .mapper import write_sa1b_sample

    folder = root / "sa1b" / "sa_000000"
    folder.mkdir(parents=True, exist_ok=True)
    numbers = range(1, sizes["samples"] + 1)
    processes = min(8, os.cpu_count() or 1, len(numbers))
    if processes <= 1 or sizes["image"][0] < 1000:  # tiny samples: not worth the processes
        for n in numbers:
            write_sa1b_sample(folder, *sizes["image"], sizes["masks"], seed=n, number=n)
        return root
    context = multiprocessing.get_context("fork")  # no re-import; numpy/PIL work only
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        jobs = [pool.submit(write_sa1b_sample, folder, *sizes["image"], sizes["masks"], n, n)
                for n in numbers]  # fmt: skip
        for job in jobs:
            job.result()
    return root


def train_run(config: Path, opts: list[str], data: Path, out: Path, device: str) -> dict:
    """tools/train_net.py in a child process; seconds per iteration from its metrics.json."""
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(config),
           "OUTPUT_DIR", str(out), "MODEL.DEVICE", device, "DATASETS.TEST", "()",
           "SOLVER.CHECKPOINT_PERIOD", "100000", "MODEL.CLIP.PRETRAINED", "", *opts]  # fmt: skip
    env = dict(os.environ, DETECTRON2_DATASETS=str(data), HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"train_net.py exited {proc.returncode}: {proc.stderr[-3000:]}")
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    times = [m["time"] for m in metrics if "time" in m]
    if not losses or not all(abs(v) < float("inf") for v in losses):
        raise RuntimeError(f"{out / 'metrics.json'}: no finite total_loss ({losses})")
    result = {"wall_s": wall, "losses": losses, "command": cmd[1:]}
    if times:  # detectron2 writes medians over its last 20 iterations (after 3 of warm-up)
        result["s_per_iter"] = times[-1]
        result["data_s_per_iter"] = [m["data_time"] for m in metrics if "data_time" in m][-1]
    return result


def equality_check(device: str) -> dict:
    """The same seeded tiny model on CPU (fp32 and float64) and on ``device`` (fp32, TF32 off):
    inference scores, one training step's loss and gradients (all parameters as one vector)."""
    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from .device import configure_tf32
    from .train import synthetic_batch

    configure_tf32(device, False)
    cfg = build_cfg("vit", "fp32", QUICK, True)
    torch.manual_seed(0)
    cpu = build_model(cfg)
    models = {"cpu": cpu, "cpu64": copy.deepcopy(cpu).double(), "device": copy.deepcopy(cpu)}
    models["device"].to(device)
    batch = synthetic_batch(QUICK["masks"]["base"], QUICK["models"]["vit"]["res"], QUICK["grid"])
    image = torch.randint(0, 256, (3, 48, 64), generator=torch.Generator().manual_seed(1),
                          dtype=torch.uint8)  # fmt: skip
    outputs, losses, grads = {}, {}, {}
    for key, model in models.items():
        model.eval()
        model.set_vocabulary(["cat", "sky, heaven", "road"])
        with torch.no_grad():
            outputs[key] = model([{"image": image, "height": 48, "width": 64}])[0]["sem_seg"]
        model.train()
        model.zero_grad(set_to_none=True)
        with EventStorage():
            loss = sum(model(batch).values())
        loss.backward()
        losses[key] = loss.detach()
        grads[key] = torch.cat([p.grad.detach().flatten().cpu().double()
                                for p in model.parameters() if p.grad is not None])  # fmt: skip
    return {
        "device": device,
        "inference_scores": close_to_float64(outputs["device"], outputs["cpu64"], outputs["cpu"]),
        "loss": close_to_float64(losses["device"], losses["cpu64"], losses["cpu"]),
        "gradients": close_to_float64(grads["device"], grads["cpu64"], grads["cpu"]),
    }


def environment(device: str) -> dict:
    import torch

    from .device import gpu_peak

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": device}
    if device == "cuda":
        name = torch.cuda.get_device_name()
        out.update(gpu=name, capability=list(torch.cuda.get_device_capability()),
                   memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30,
                   peaks={p: gpu_peak(name, p, False) for p in ("fp32", "bf16", "fp16")},
                   tf32_peak=gpu_peak(name, "fp32", True))  # fmt: skip
    return out


def benchmark_args(args, device: str, dry: bool, sizes: dict) -> argparse.Namespace:
    """The in-process benchmark options of the suite: the user's switches, the suite's sizes."""
    sub = argparse.Namespace(**vars(args))
    sub.device, sub.quick, sub.batch = device, dry, sizes["vitb_batch"]
    sub.repeats, sub.warmup, sub.sample_dir = sizes["repeats"], max(args.warmup, 2), None
    return sub


def run_suite(args) -> dict:
    """Run every step (see the module docstring) and write the JSON report."""
    import torch

    from .runner import run_worker

    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    if not dry and not torch.cuda.is_available():
        raise SystemExit("--gpu-suite needs CUDA (torch.cuda.is_available() is False); "
                         "--dry-run runs it on CPU")  # fmt: skip
    sizes = DRY if dry else REAL
    report = {"schema": SCHEMA, "dry_run": dry, "budget_s": BUDGET_S, "steps": {},
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_description(args.threads)}  # fmt: skip
    suite_start = time.perf_counter()

    def step(name, fn):
        print(f"gpu suite: {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            result = {"ok": True, **fn()}
        except Exception as e:  # noqa: BLE001 -- a failing step is reported, the next one runs
            logger.exception("gpu suite step %s failed", name)
            result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        result["seconds"] = time.perf_counter() - start
        report["steps"][name] = result
        return result

    keep = Path(args.keep) if args.keep else None
    with tempfile.TemporaryDirectory(prefix="pixelclip-gpu-suite-") as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        step("environment", lambda: environment(device))
        step("data", lambda: {"root": str(write_samples(work / "datasets", sizes)), **sizes})
        data = work / "datasets"
        quick_opts = ["SOLVER.MAX_ITER", str(sizes["quick_iters"])]
        step("train:quick", lambda: train_run(QUICK_CONFIG, quick_opts, data, work / "quick",
                                              device))  # fmt: skip
        vitb_opts = [
            "SOLVER.IMS_PER_BATCH",
            str(sizes["vitb_batch"]),
            "SOLVER.MAX_ITER",
            str(sizes["vitb_iters"]),
            "DATALOADER.NUM_WORKERS",
            str(0 if dry else min(8, os.cpu_count() or 1)),
            "TEST.EVAL_PERIOD",
            "0",
        ]
        vitb_opts += DRY_VITB_OPTS if dry else []  # fmt: skip
        step("train:vitb16", lambda: train_run(VITB_CONFIG, vitb_opts, data, work / "vitb16",
                                               device))  # fmt: skip
        step("equality", lambda: equality_check(device))
        sub = benchmark_args(args, device, dry, sizes)
        specs = [f"matmul:{p}" for p in args.dtype] + [
            f"{kind}:vit:{x}:{p}" for kind, xs in (("train", ("realistic",)),
                                                   ("infer", ("whole", "slide")))
            for x in xs for p in args.dtype] + ["vocab:vit:ours"]  # fmt: skip

        def benchmarks():
            results = {}
            for spec in specs:
                print(f"gpu suite: benchmark {spec} ...", file=sys.stderr, flush=True)
                results[spec] = run_worker(spec, sub)
                if device == "cuda":
                    torch.cuda.empty_cache()
            failed = [k for k, r in results.items() if "error" in r]
            if failed:
                raise RuntimeError(f"benchmarks failed: {failed}: {results[failed[0]]['error']}")
            return {"results": results, "settings": (QUICK if dry else FULL)["models"]["vit"]}

        step("benchmarks", benchmarks)
    total = time.perf_counter() - suite_start
    checks = report["steps"].get("equality", {})
    report.update(total_s=total, within_budget=total <= BUDGET_S,
                  ok=all(s["ok"] for s in report["steps"].values())
                  and all(checks.get(k, {}).get("ok") for k in
                          ("inference_scores", "loss", "gradients")))  # fmt: skip
    output = Path(args.output or "gpu_suite.json")
    output.write_text(json.dumps(report, indent=1))
    print(format_suite(report, output))
    return report


def format_suite(report: dict, output: Path) -> str:
    rows = []
    for name, s in report["steps"].items():
        status = "ok" if s["ok"] else f"FAILED {s['error'].splitlines()[0][:100]}"
        extra = ""
        if "s_per_iter" in s:
            extra = f", {s['s_per_iter']:.3f} s/iter"
        if name == "equality" and s["ok"]:
            extra = ", " + ", ".join(
                f"{k} {'equal' if s[k]['ok'] else 'DIFFERENT'} ({s[k]['max_abs_error']:.2g} <= "
                f"{s[k]['tolerance']:.2g})" if s[k]["ok"] else f"{k} DIFFERENT "
                f"({s[k]['max_abs_error']:.2g} > {s[k]['tolerance']:.2g})"
                for k in ("inference_scores", "loss", "gradients"))  # fmt: skip
        rows.append(f"{name:14s} {s['seconds']:7.1f} s  {status}{extra}")
        for spec, r in s.get("results", {}).items():
            mfu = f", MFU {r['mfu']:.1%} ({r['mfu_against']})" if "mfu" in r else ""
            mem = f", {r['peak_cuda_mb']:.0f} MiB CUDA" if "peak_cuda_mb" in r else ""
            rows.append(f"  {spec:26s} {r.get('median_s', float('nan')):8.3f} s{mfu}{mem}")
    verdict = "all steps passed" if report["ok"] else "SOME STEPS FAILED"
    budget = "within" if report["within_budget"] else "OVER"
    rows.append(f"total {report['total_s']:.0f} s ({budget} the {report['budget_s']:.0f} s "
                f"budget); {verdict}; report: {output}")  # fmt: skip
    return "\n".join(rows)
