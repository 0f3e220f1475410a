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
- ``shards:tar`` / ``shards:folder``: samples/s of one data-loader worker (one torch thread)
  reading and mapping generated SA-1B samples from a tar shard (DATASETS.SA1B.SHARDS) and from
  the extracted folder (:mod:`.shards`).
- ``vocab:vit:{ours,plain}``: a new vocabulary (150 ADE20K classes x 8 templates) through the
  random-weight ViT-B/16 text tower, as ``encode_vocabulary`` does it and as one plain
  ``encode_text`` call on the same texts (:mod:`.vocab`).
- ``flops:{vit,convnext}:{base,realistic}`` (only by name): the FLOPs of one training step at
  ``--batch`` images, counted, not timed (the paper's per-GPU batch is 12).
- ``profile:vit:base:{fp32,bf16}`` (only with ``--profile``, CPU only): time per phase of one
  training step and the top operators of torch.profiler.

GPU runs: ``--device cuda`` times every workload with CUDA events after warm-up and
synchronisation and reports torch.cuda.max_memory_allocated; ``--dtype`` picks the precisions
(fp16 is the training code's AMP: autocast and a GradScaler), ``--channels-last``, ``--compile``
and ``--tf32`` are switches, and the MFU is given against the GPU's datasheet peak
(:data:`.device.GPU_PEAKS`; on CPU against the measured matmul). ``--gpu-suite`` runs the first
GPU hour's checks in one go (:mod:`.gpu_suite`; ``--dry-run``: the same on CPU, tiny).

Model FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions
and attention, forward and backward; 1 multiply-add = 2 FLOPs) in one more run after the timed
ones. Peak RSS of the training and inference benchmarks is read before that run: under the
counter's dispatch mode a ViT-B/16 training step peaked at 3569 MiB against 3136 MiB without.

Usage:
    python tools/benchmark.py --output benchmark.json               # everything (slow on CPU)
    python tools/benchmark.py --only train:vit:base matmul --repeats 3
    python tools/benchmark.py --quick --output /tmp/quick.json      # tiny models, seconds
    python tools/benchmark.py --device cuda --dtype bf16 --only train:vit infer:vit
    python tools/benchmark.py --gpu-suite --output gpu_suite.json   # the first GPU hour
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..cli_help import HelpFormatter
from .common import FULL, QUICK, REPO, machine_description, peak_rss_mb
from .device import DTYPES, configure_tf32
from .infer import bench_infer
from .mapper import bench_mapper, write_sa1b_sample
from .matmul import bench_matmul
from .shards import bench_shards, write_shard_samples
from .train import bench_flops, bench_profile, bench_train
from .vocab import bench_vocab

SCHEMA = "pixelclip-benchmark/1"
MODELS = ("vit", "convnext")
PRECISIONS = ("fp32", "bf16")  # the default --dtype
LOADS = ("base", "realistic")


def all_specs(dtypes=PRECISIONS) -> list[str]:
    """Every benchmark run by default, in the given precisions."""
    return (
        [f"train:{m}:{load}:{p}" for m in MODELS for load in LOADS for p in dtypes]
        + [f"infer:{m}:{proto}:{p}" for m in MODELS for proto in ("whole", "slide") for p in dtypes]
        + ["mapper:ours", "mapper:yardstick"]
        + [f"matmul:{p}" for p in dtypes]
        + ["shards:tar", "shards:folder", "vocab:vit:ours", "vocab:vit:plain"]
    )


ALL_SPECS = all_specs()
PROFILE_SPECS = tuple(f"profile:vit:base:{p}" for p in PRECISIONS)
FLOPS_SPECS = tuple(f"flops:{m}:{load}" for m in MODELS for load in LOADS)
# The performance targets (docs/PERFORMANCE.md): (name, benchmark, field, comparison, limit),
# all set for the real models and sizes on CPU: --quick and --device cuda runs are not judged.
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


RUNNERS = {"train": bench_train, "infer": bench_infer, "matmul": bench_matmul,
           "mapper": bench_mapper, "profile": bench_profile, "shards": bench_shards,
           "vocab": bench_vocab, "flops": bench_flops}  # fmt: skip


# ----------------------------------------------------------------------------- orchestration
def run_worker(spec: str, args) -> dict:
    """Run one benchmark in this process; returns its result dict."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    configure_tf32(args.device, args.tf32)
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
    cmd = [sys.executable, "-m", "pixelclip.benchmark", "--worker", spec,
           "--threads", str(args.threads), "--warmup", str(args.warmup),
           "--repeats", str(args.repeats), "--device", args.device, "--batch", str(args.batch),
           "--compile-backend", args.compile_backend]  # fmt: skip
    for flag in ("quick", "tf32", "channels_last", "compile"):
        if getattr(args, flag):
            cmd.append("--" + flag.replace("_", "-"))
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
    tar, folder = by_name.get("shards:tar"), by_name.get("shards:folder")
    if tar and folder:
        tar["tar_vs_folder"] = tar["samples_per_s"] / folder["samples_per_s"]


def evaluate_targets(results: list[dict], quick: bool = False, device: str = "cpu") -> list[dict]:
    """Performance targets against the results; ``met`` is None when the benchmark did not run
    or is not judged: the targets are for ViT-B/16 (and the real SA-1B sample) on CPU, so a
    --quick run (tiny models and samples) or a GPU run reports its values without a verdict."""
    by_name = {r["name"]: r for r in results}
    out = []
    for name, spec, field, op, limit in TARGETS:
        value = by_name.get(spec, {}).get(field)
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        status = {True: "MET", False: "NOT MET", None: "not run"}[met]
        if value is not None and quick:
            met = None
            status = "not judged (tiny sample)" if spec.startswith("mapper") else (
                "not judged (tiny model)")  # fmt: skip
        elif value is not None and device != "cpu":
            met, status = None, "not judged (CPU target)"
        out.append({"target": name, "benchmark": spec, "field": field, "limit": f"{op} {limit}",
                    "value": value, "met": met, "status": status})  # fmt: skip
    return out


EXTRA_FIELDS = (
    ("samples_per_s", "{:.2f} samples/s"),
    ("gflops", "{:.1f} GFLOP/s"),
    ("gflops_achieved", "{:.1f} GFLOP/s"),
    ("matmul_fraction", "{:.0%} of matmul"),
    ("mfu", "MFU {:.1%}"),
    ("peak_cuda_mb", "CUDA peak {:.0f} MiB"),
    ("gflop_per_image", "{:.0f} GFLOP/image"),
    ("speedup_vs_yardstick", "x{:.1f} vs yardstick"),
    ("tar_vs_folder", "x{:.2f} vs folder"),
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
        if "mfu_note" in r:
            extra.append(r["mfu_note"])
        times = [f"{r[k]:9.3f}" if k in r else f"{'-':>9s}" for k in ("median_s", "min_s", "max_s")]
        rows.append(f"{r['name']:28s} {' '.join(times)} {r['peak_rss_mb']:8.0f}  "
                    f"{', '.join(extra)}")  # fmt: skip
    for t in report["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        rows.append(f"target {t['target']:38s} {t['limit']:>9s}  {value:>8s}  {t['status']}")
    load = report["load_average"]
    rows.append(f"load average (1, 5, 15 min): start {load['start']}, end {load['end']}")
    return "\n".join(rows)


def select_specs(patterns: list[str] | None, profile: bool, dtypes=PRECISIONS) -> list[str]:
    specs = all_specs(dtypes)
    known = specs + list(PROFILE_SPECS) + list(FLOPS_SPECS)
    if not patterns:
        return specs + (list(PROFILE_SPECS) if profile else [])
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
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
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run")
    p.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(PRECISIONS),
                   help="precisions of the train/infer/matmul benchmarks (fp16: autocast + "
                   "GradScaler, the training code's SOLVER.AMP.ENABLED)")  # fmt: skip
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions (CUDA)")
    p.add_argument("--channels-last", action="store_true", help="channels-last model weights")
    p.add_argument("--compile", action="store_true", help="torch.compile the heavy modules")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    p.add_argument("--batch", type=int, default=2, help="images per training step")
    p.add_argument(
        "--gpu-suite",
        action="store_true",
        help="run the first-GPU-hour suite instead (pixelclip/benchmark/gpu_suite.py)",
    )
    p.add_argument("--dry-run", action="store_true",
                   help="with --gpu-suite: every step on CPU with tiny sizes")  # fmt: skip
    p.add_argument("--keep", help="with --gpu-suite: keep the generated data and runs here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--sample-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for key in ("warmup", "repeats", "threads", "batch"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    if len(args.opts) % 2:
        p.error(f"--opts takes KEY VALUE pairs, got {args.opts}")
    if args.dry_run and not args.gpu_suite:
        p.error("--dry-run goes with --gpu-suite")
    if args.device == "cuda" and not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: torch.cuda.is_available() is False on this machine")
    return args


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        print(json.dumps(run_worker(args.worker, args)))
        return None
    if args.gpu_suite:
        from .gpu_suite import run_suite

        return run_suite(args)
    if args.device == "cuda" and args.profile:
        raise SystemExit("--profile times phases with the CPU clock: CPU only")
    specs = select_specs(args.only, args.profile, args.dtype)
    load_start = list(os.getloadavg())
    settings = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="pixelclip-bench-") as tmp:
        if any(s.startswith("mapper") for s in specs):
            write_sa1b_sample(Path(tmp), *settings["mapper_image"], settings["mapper_masks"])
            args.sample_dir = tmp
        if any(s.startswith("shards") for s in specs):
            write_shard_samples(Path(tmp) / "shards", args.quick)
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
            "device": args.device,
            "dtype": args.dtype,
            "batch": args.batch,
            "tf32": args.tf32,
            "channels_last": args.channels_last,
            "compile": args.compile_backend if args.compile else None,
        },  # fmt: skip
        "machine": machine_description(args.threads),
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
        "results": results,
        "targets": evaluate_targets(results, args.quick, args.device),
    }
    print(format_table(report))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))
    return report
