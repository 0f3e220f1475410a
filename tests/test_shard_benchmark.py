"""The shards:tar / shards:folder benchmarks with tiny settings: both sources map every sample and
the report has the ratio. Timings are never asserted."""

from pixelclip.benchmark import runner


def test_tar_and_folder_benchmarks_report_samples_per_second(capsys):
    report = runner.main(
        ["--quick", "--in-process", "--threads", "1", "--warmup", "1", "--repeats", "2",
         "--only", "shards"]
    )  # fmt: skip
    by_name = {r["name"]: r for r in report["results"]}
    assert set(by_name) == {"shards:tar", "shards:folder"}
    for name, r in by_name.items():
        assert "error" not in r, (name, r.get("error"))
        assert len(r["times_s"]) == 2 and r["samples_per_s"] > 0
        assert r["settings"]["samples_per_run"] == 3 and r["settings"]["torch_threads"] == 1
    assert by_name["shards:tar"]["settings"]["downscale"]  # DATASETS.SA1B.DOWNSCALE's default
    ratio = by_name["shards:tar"]["samples_per_s"] / by_name["shards:folder"]["samples_per_s"]
    assert by_name["shards:tar"]["tar_vs_folder"] == ratio
    assert "vs folder" in capsys.readouterr().out
