"""The benchmarks (pixelclip.benchmark, tools/benchmark.py) with tiny settings: the JSON report's
schema and arithmetic, the yardstick mapper's agreement with the real one, target judgement, bad
arguments. Timings are never asserted."""

import json
import statistics
from pathlib import Path

import pytest
import torch
from conftest import load_script

from pixelclip.benchmark import common, matmul
from pixelclip.benchmark import runner as bench

REPO = Path(__file__).resolve().parents[1]
SPECS = ["matmul:fp32", "train:vit:base:fp32", "infer:vit:whole:fp32", "mapper"]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "report.json"
    threads = torch.get_num_threads()
    argv = ["--quick", "--in-process", "--threads", "1", "--repeats", "3", "--output", str(out)]
    bench.main([*argv, "--only", *SPECS])
    assert torch.get_num_threads() == threads  # the run leaves the process as it found it
    return json.loads(out.read_text())


def test_report_has_the_documented_schema(quick_report):
    r = quick_report
    assert r["schema"] == "pixelclip-benchmark/1"
    assert r["settings"] == {
        "quick": True,
        "warmup": 1,
        "repeats": 3,
        "threads": 1,
        "isolated": False,
        "device": "cpu",
        "dtype": ["fp32", "bf16"],
        "batch": 2,
        "tf32": False,
        "channels_last": False,
        "compile": None,
    }
    machine = r["machine"]
    for key in ("cpu", "logical_cpus", "cpu_flags", "torch", "torch_threads", "env"):
        assert key in machine
    assert set(machine["env"]) >= {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"}
    assert len(r["load_average"]["start"]) == 3 and len(r["load_average"]["end"]) == 3
    names = [x["name"] for x in r["results"]]
    assert names == [
        "matmul:fp32",
        "train:vit:base:fp32",
        "infer:vit:whole:fp32",
        "mapper:ours",
        "mapper:yardstick",
    ]
    for x in r["results"]:
        assert "error" not in x, x
        assert len(x["times_s"]) == 3
        assert x["median_s"] == pytest.approx(statistics.median(x["times_s"]))
        assert x["min_s"] == min(x["times_s"]) and x["max_s"] == max(x["times_s"])
        assert x["peak_rss_mb"] > 0
        assert len(x["load_average"]) == 2


def test_flops_and_derived_ratios(quick_report):
    res = {x["name"]: x for x in quick_report["results"]}
    matmul = res["matmul:fp32"]
    n = matmul["settings"]["n"]
    assert matmul["gflop"] == pytest.approx(2 * n**3 / 1e9)  # n^3 multiply-adds
    assert matmul["gflops"] == pytest.approx(matmul["gflop"] / matmul["median_s"])
    train = res["train:vit:base:fp32"]
    # Lower bound: the patch convolutions of the teacher and student forwards alone, 2 images,
    # grid^2 patches x (3 x 16 x 16) inputs x width outputs, 2 FLOPs per multiply-add.
    width = json.loads((REPO / "configs/clip_models/tiny-vit.json").read_text())["vision_cfg"][
        "width"
    ]
    grid = train["settings"]["clip_resolution"] // 16
    assert train["gflop"] * 1e9 > 2 * 2 * 2 * grid * grid * 3 * 16 * 16 * width
    assert train["matmul_gflops"] > 0  # the yardstick measured again in the same process
    assert train["matmul_fraction"] == pytest.approx(
        train["gflops_achieved"] / train["matmul_gflops"]
    )
    infer = res["infer:vit:whole:fp32"]
    assert infer["settings"]["classes"] == 10 and infer["vocabulary_encoding_s"] > 0
    ours, yardstick = res["mapper:ours"], res["mapper:yardstick"]
    assert ours["samples_per_s"] == pytest.approx(1 / ours["median_s"])
    assert ours["speedup_vs_yardstick"] == pytest.approx(
        ours["samples_per_s"] / yardstick["samples_per_s"]
    )


def test_yardstick_mapper_produces_the_same_samples(quick_report):
    yardstick = {x["name"]: x for x in quick_report["results"]}["mapper:yardstick"]
    assert yardstick["matches_mapper"] is True


def test_targets_in_the_report_follow_the_results(quick_report):
    targets = {t["target"]: t for t in quick_report["targets"]}
    assert len(targets) == len(bench.TARGETS)
    train = {x["name"]: x for x in quick_report["results"]}["train:vit:base:fp32"]
    t = targets["train ViT-B/16 fp32 (s)"]
    # A tiny model's value is reported, never judged against a ViT-B/16 target.
    assert t["value"] == train["median_s"] and t["met"] is None
    assert t["status"] == "not judged (tiny model)"
    assert targets["mapper speed-up over yardstick"]["status"] == "not judged (tiny sample)"
    assert targets["train ViT-B/16 bf16 (s)"]["status"] == "not run"


def test_quick_and_gpu_runs_print_no_verdict(quick_report, capsys):
    table = bench.format_table(quick_report)
    lines = [line for line in table.splitlines() if line.startswith("target train ViT-B/16 fp32")]
    assert lines and all("not judged (tiny model)" in line for line in lines)
    assert " MET" not in table
    results = [{"name": "train:vit:base:fp32", "median_s": 1.0}]
    (gpu,) = [t for t in bench.evaluate_targets(results, device="cuda") if t["value"] is not None]
    assert gpu["met"] is None and gpu["status"] == "not judged (CPU target)"
    (cpu,) = [t for t in bench.evaluate_targets(results) if t["value"] is not None]
    assert cpu["met"] is True and cpu["status"] == "MET"


def test_targets_are_judged_against_the_limits():
    results = [
        {
            "name": "train:vit:base:fp32",
            "median_s": 8.0,
            "peak_rss_mb": 3100.0,
            "matmul_fraction": 0.2,
        },
        {"name": "train:vit:base:bf16", "median_s": 4.1},
        {"name": "mapper:ours", "speedup_vs_yardstick": 3.0},
    ]
    got = {t["target"]: t["met"] for t in bench.evaluate_targets(results)}
    assert got["train ViT-B/16 fp32 (s)"] is True  # the limit itself passes
    assert got["train ViT-B/16 bf16 (s)"] is False
    assert got["train ViT-B/16 fp32 peak RSS (MB)"] is False
    assert got["mapper speed-up over yardstick"] is True
    assert got["train fp32 / matmul fp32 GFLOP/s"] is False
    assert got["inference ViT-B/16 fp32 (s)"] is None


def test_median_of_an_even_count_is_the_mean_of_the_middle_two():
    s = common.summary([3.0, 1.0, 10.0, 2.0])
    assert (s["median_s"], s["min_s"], s["max_s"]) == (2.5, 1.0, 10.0)


def test_isolated_worker_runs_in_its_own_process():
    args = bench.parse_args(["--quick", "--threads", "1", "--repeats", "1"])
    result = bench.run_isolated("matmul:fp32", args)
    assert "error" not in result, result
    assert result["name"] == "matmul:fp32" and result["peak_rss_mb"] > 0
    assert result["gflop"] == pytest.approx(2 * 128**3 / 1e9)


def test_the_tool_runs_the_package_runner(capsys):
    tool = load_script("tools/benchmark.py", "pixelclip_benchmark_tool")
    with pytest.raises(SystemExit) as exc:
        tool.main(["--help"])
    assert exc.value.code == 0 and "train:{vit,convnext}" in capsys.readouterr().out


def test_bad_arguments_fail_with_a_clear_message(capsys):
    with pytest.raises(SystemExit, match="unknown benchmark 'train:resnet'"):
        bench.select_specs(["train:resnet"], profile=False)
    with pytest.raises(SystemExit):
        bench.parse_args(["--repeats", "0"])
    assert "--repeats must be >= 1" in capsys.readouterr().err
    assert bench.select_specs(["train:vit:base", "matmul"], False)[:2] == [
        "matmul:fp32",
        "matmul:bf16",
    ]


def test_config_overrides_reach_the_benchmarked_model(capsys):
    args = bench.parse_args(["--quick", "--opts", "MODEL.CLIP.GRAD_CHECKPOINTING", "True"])
    cfg = common.build_cfg("vit", "fp32", common.QUICK, True, args.opts)
    assert cfg.MODEL.CLIP.GRAD_CHECKPOINTING is True
    with pytest.raises(SystemExit):
        bench.parse_args(["--opts", "MODEL.CLIP.GRAD_CHECKPOINTING"])
    assert "KEY VALUE pairs" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["train:vit:base:fp32", "infer:vit:whole:fp32"])
def test_peak_rss_is_read_before_the_flop_counting_run(spec, monkeypatch):
    """FlopCounterMode costs memory the timed runs do not: its run must not set the peak."""
    hog = []

    def counting_run_that_hogs_memory(fn, by_module=False):
        fn()
        # more than the whole peak so far: the process's peak RSS must rise
        hog.append(torch.ones(int((common.peak_rss_mb() + 64) * 2**20), dtype=torch.uint8))
        return 0

    monkeypatch.setattr(matmul, "count_flops", counting_run_that_hogs_memory)
    monkeypatch.setattr(matmul, "bench_matmul", lambda *a: {"gflops": 1.0})
    args = bench.parse_args(["--quick", "--in-process", "--threads", "1", "--repeats", "1"])
    result = bench.RUNNERS[spec.split(":")[0]](spec, common.QUICK, args)
    assert hog and result["peak_rss_mb"] < common.peak_rss_mb() - 32
