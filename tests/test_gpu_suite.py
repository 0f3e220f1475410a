"""The GPU paths of the benchmarks (pixelclip/benchmark/device.py, gpu_suite.py): the peak table,
the MFU, the equality rule, the suite's --dry-run end to end on CPU, and the CUDA-only runs
(marked ``cuda``: skipped with reason "needs CUDA" on a machine without a GPU)."""

import json

import pytest
import torch

from pixelclip.benchmark import device as dev
from pixelclip.benchmark import gpu_suite
from pixelclip.benchmark import runner as bench

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize(
    "name, precision, tf32, gpu, peak",
    [
        ("NVIDIA A100-SXM4-80GB", "bf16", False, "A100", 312.0),
        ("NVIDIA A100 80GB PCIe", "fp32", False, "A100", 19.5),
        ("NVIDIA A100-SXM4-40GB", "fp32", True, "A100", 156.0),
        ("NVIDIA H100 80GB HBM3", "fp16", False, "H100 SXM", 989.5),
        ("NVIDIA H100 PCIe", "bf16", False, "H100 PCIe", 756.0),
        ("NVIDIA RTX A6000", "bf16", False, "RTX A6000", 154.8),
        ("NVIDIA L40S", "bf16", False, "L40S", 366.0),
        ("NVIDIA L4", "bf16", False, "L4", 121.0),
        ("NVIDIA A10", "fp32", False, "A10", 31.2),
        ("NVIDIA GeForce RTX 4090", "fp16", False, "RTX 4090", 165.2),
        ("Tesla V100-SXM2-16GB", "fp16", False, "V100 SXM2", 125.0),
        ("Tesla V100-PCIE-32GB", "fp32", False, "V100 PCIe", 14.0),
        ("Tesla T4", "fp16", False, "T4", 65.0),
    ],
)
def test_gpu_peak_table_matches_device_names(name, precision, tf32, gpu, peak):
    got = dev.gpu_peak(name, precision, tf32)
    assert (got["gpu"], got["peak_tflops"]) == (gpu, peak)
    assert got["math"] == ("tf32" if tf32 else precision)


def test_unknown_gpu_or_mode_omits_the_mfu():
    assert "not in the peak table" in dev.gpu_peak("NVIDIA B300", "bf16", False)["note"]
    assert "no bf16" in dev.gpu_peak("Tesla T4", "bf16", False)["note"]
    assert "no tf32" in dev.gpu_peak("Tesla V100-SXM2-16GB", "fp32", True)["note"]


def test_mfu_on_cpu_is_against_the_measured_matmul():
    got = dev.mfu_fields({"gflops_achieved": 50.0}, "cpu", "fp32", False, 200.0)
    assert got == {"mfu": 0.25, "mfu_against": "measured matmul (CPU)"}
    assert dev.mfu_fields({}, "cpu", "fp32", False, 200.0) == {}


def test_close_to_float64_allows_factor_times_the_cpu_error():
    ref64 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    cpu = ref64 + torch.tensor([1e-7, 0.0], dtype=torch.float64)
    tol = 4 * (1e-7 + 2.0**-23 * 2.0)
    near = gpu_suite.close_to_float64(ref64 + 0.9 * tol, ref64, cpu)
    far = gpu_suite.close_to_float64(ref64 + 1.1 * tol, ref64, cpu)
    assert near["ok"] and not far["ok"]
    assert near["tolerance"] == pytest.approx(tol) and far["max_abs_error"] == pytest.approx(
        1.1 * tol
    )


def test_cpu_timing_counts_only_the_timed_calls():
    calls = []
    times = dev.timed_runs(lambda: calls.append(1), warmup=2, repeats=3, device="cpu")
    assert len(times) == 3 and len(calls) == 5 and all(t >= 0 for t in times)
    assert dev.peak_memory_fields("cpu") == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_fails_clearly(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cuda"])
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--gpu-suite needs CUDA"):
        bench.main(["--gpu-suite"])


@pytest.mark.slow
def test_dry_run_runs_the_whole_suite_on_cpu(tmp_path):
    """Every step of --gpu-suite on CPU with tiny sizes, with every switch (fp16 with the
    GradScaler, channels-last, torch.compile with the eager backend)."""
    out = tmp_path / "suite.json"
    argv = ["--gpu-suite", "--dry-run", "--threads", "1", "--output", str(out),
            "--dtype", "fp32", "fp16", "--channels-last", "--compile",
            "--compile-backend", "eager"]  # fmt: skip
    report = bench.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    steps = report["steps"]
    assert list(steps) == [
        "environment", "data", "train:quick", "train:vitb16", "equality", "benchmarks"
    ]  # fmt: skip
    for name, s in steps.items():
        assert s["ok"], (name, s.get("error"))
    assert report["ok"] and report["dry_run"]
    for key in ("inference_scores", "loss", "gradients"):
        assert steps["equality"][key]["ok"], steps["equality"][key]
        assert steps["equality"][key]["scale"] > 0
    for run in ("train:quick", "train:vitb16"):
        assert steps[run]["losses"] and all(abs(v) < 1e3 for v in steps[run]["losses"])
    assert "SOLVER.IMS_PER_BATCH" in steps["train:vitb16"]["command"]
    results = steps["benchmarks"]["results"]
    assert set(results) == {
        "matmul:fp32", "matmul:fp16", "train:vit:realistic:fp32", "train:vit:realistic:fp16",
        "infer:vit:whole:fp32", "infer:vit:whole:fp16", "infer:vit:slide:fp32",
        "infer:vit:slide:fp16", "vocab:vit:ours",
    }  # fmt: skip
    train16 = results["train:vit:realistic:fp16"]
    assert train16["settings"]["compile"] == "eager" and train16["settings"]["channels_last"]
    assert train16["mfu"] == pytest.approx(train16["gflops_achieved"] / train16["matmul_gflops"])


# ------------------------------------------------------------------------- CUDA-only tests
@pytest.mark.cuda
@needs_cuda
def test_cuda_events_time_and_peak_memory_is_read():
    a = torch.randn(2048, 2048, device="cuda")
    dev.reset_peak_memory("cuda")
    times = dev.timed_runs(lambda: a @ a, warmup=1, repeats=3, device="cuda")
    assert len(times) == 3 and all(t > 0 for t in times)
    peak = dev.peak_memory_fields("cuda")
    assert peak["peak_cuda_mb"] >= 2 * 2048 * 2048 * 4 / 2**20  # a and one product


@pytest.mark.cuda
@needs_cuda
def test_cuda_outputs_equal_the_cpu_ones():
    result = gpu_suite.equality_check("cuda")
    for key in ("inference_scores", "loss", "gradients"):
        assert result[key]["ok"], (key, result[key])


@pytest.mark.cuda
@needs_cuda
def test_cuda_benchmarks_run_in_every_precision(tmp_path):
    out = tmp_path / "report.json"
    bench.main(["--device", "cuda", "--quick", "--in-process", "--repeats", "2", "--output",
                str(out), "--dtype", "fp32", "bf16", "fp16", "--only", "matmul", "train:vit:base",
                "infer:vit", "vocab:vit:ours"])  # fmt: skip
    report = json.loads(out.read_text())
    for r in report["results"]:
        assert "error" not in r, r
        if r["name"].startswith(("train", "infer")):
            assert r["peak_cuda_mb"] > 0 and ("mfu" in r or "mfu_note" in r)
    assert all(t["met"] is None for t in report["targets"])


@pytest.mark.cuda
@pytest.mark.slow
@needs_cuda
def test_gpu_suite_on_the_gpu(tmp_path):
    report = bench.main(["--gpu-suite", "--output", str(tmp_path / "suite.json")])
    assert report["ok"], {k: s.get("error") for k, s in report["steps"].items()}
