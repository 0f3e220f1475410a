"""Integration test of the quickstart (`make demo`, tools/quickstart.py, pixelclip.toyworld): a
shortened run must beat the baseline.

Slow (about two minutes on 2 CPU cores): world of 160 train / 40 dev / 40 test images, 100
training iterations, one seed, one torch thread; the world and the training are seeded, so the run
is deterministic on a given machine. Measured with the committed config (CLIP at 144 px): dev
31.1 -> 35.6 (AMD EPYC, AVX512-BF16); with the earlier 96 px config 30.5 -> 35.3. The shortened
run is noisy across settings (at 96 px, 60 iterations gave 29.2, 150 gave 29.6 on this small
world), so the margin below is deliberately loose.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# Below the dev gain this seeded run gives (measured: `tools/quickstart.py --quick` gives dev
# 31.1 -> 35.6, +4.5, with the 144 px config; +4.8 at 96 px with k = 32, +2.2 with k = 16), with
# a margin of 2 points for CPUs whose rounding differs.
MIN_DEV_GAIN = 2.5


def _load_quickstart():
    from pixelclip.toyworld import quickstart

    return quickstart


def _miou_from_predictions(preds: list[np.ndarray], labels: list[np.ndarray], n: int) -> float:
    """Independent mIoU (classes without ground truth left out, as SemSegEvaluator does)."""
    inter, union, gt = np.zeros(n), np.zeros(n), np.zeros(n)
    for p, g in zip(preds, labels):
        for c in range(n):
            inter[c] += np.sum((p == c) & (g == c))
            union[c] += np.sum((p == c) | (g == c))
            gt[c] += np.sum(g == c)
    valid = gt > 0
    return float(np.mean(inter[valid] / union[valid]) * 100)


def test_quickstart_rejects_odd_overrides():
    qs = _load_quickstart()
    with pytest.raises(SystemExit):
        qs.parse_args(["--quick", "MODEL.PROMPT.NUM_CLUSTERS"])
    with pytest.raises(SystemExit):  # an option after the overrides would become one
        qs.parse_args(["MODEL.PROMPT.NUM_CLUSTERS", "8", "--ablations", "k8"])
    args = qs.parse_args(["--ablations", "k8", "--", "SOLVER.MAX_ITER", "5"])
    assert args.ablations == ["k8"] and args.opts == ["SOLVER.MAX_ITER", "5"]


def test_the_tool_is_the_package_pipeline(capsys):
    tool = load_script("tools/quickstart.py", "quickstart_tool")
    with pytest.raises(SystemExit) as exc:
        tool.main(["--help"])
    assert exc.value.code == 0 and "--world-dir" in capsys.readouterr().out


def test_summary_mean_std_matches_hand_values():
    from pixelclip.toyworld import report

    res = [{s: {"mIoU": v, "stuff": v, "things": v} for s in ("dev", "test")} for v in (10, 14)]
    table = report.summarise(None, {"P": res}, [0, 1])
    mean_row = table["rows"][-1]
    assert mean_row["test/mIoU"] == pytest.approx(12.0)
    assert mean_row["test/mIoU_std"] == pytest.approx(math.sqrt(8.0))  # sample std of 10, 14
    assert "12.0 ± 2.8" in report.to_markdown(table, [])


def test_every_ablation_is_a_valid_config():
    qs = _load_quickstart()
    args = qs.parse_args(["--quick", "--ablations", "all"])
    assert args.ablations == list(qs.ablations())
    with pytest.raises(SystemExit):
        qs.parse_args(["--ablations", "no-such-thing"])
    from detectron2.modeling import build_model

    from pixelclip.toyworld import TOYWORLD_CLASSES

    for name, (label, extra) in qs.ablations().items():
        cfg = qs.build_cfg(str(qs.DEFAULT_CONFIG), extra, "/tmp/unused")
        if name == "class-name-prompts":
            assert list(cfg.MODEL.PROMPT.CLASS_NAMES) == list(TOYWORLD_CLASSES)
            model = build_model(cfg)  # NUM_CLUSTERS matches the names
            assert model.sem_seg_head.prompt_embeddings().shape[0] == len(TOYWORLD_CLASSES)
        assert label


def test_an_ablation_equal_to_the_config_is_not_trained_twice():
    qs = _load_quickstart()
    k = qs.build_cfg(str(qs.DEFAULT_CONFIG), [], "").MODEL.PROMPT.NUM_CLUSTERS
    same, other = f"k{k}", next(n for n in ("k8", "k16", "k32") if n != f"k{k}")
    args = qs.parse_args(["--ablations", other, same, "no-teacher"])
    assert [name for name, _, _ in qs.runs_to_train(args, [])] == ["", other, "no-teacher"]
    # With other overrides the same ablation changes the config.
    opts = ["MODEL.PROMPT.NUM_CLUSTERS", "4"]
    assert [name for name, _, _ in qs.runs_to_train(args, opts)] == ["", other, same, "no-teacher"]
    args = qs.parse_args(["--skip-main", "--ablations", other, same])
    assert [name for name, _, _ in qs.runs_to_train(args, [])] == [other, same]


@pytest.mark.slow
def test_quickstart_quick_run_beats_baseline(tmp_path, monkeypatch):
    import torch

    from pixelclip.toyworld import TOYWORLD_CLASSES

    qs = _load_quickstart()
    # The suite's thread count (conftest: PIXELCLIP_TEST_THREADS, else up to 2), not the
    # quickstart's default of 1: 2 threads gave dev 31.1 -> 36.2 (+5.1) in 111 s of training.
    threads = str(torch.get_num_threads())
    summary = qs.main(["--quick", "--threads", threads, "--output-dir", str(tmp_path / "qs")])
    rows = {row["model"]: row for row in summary["table"]["rows"]}
    baseline = rows["toy-clip (baseline, no training)"]
    trained = rows["PixelCLIP (seed 0)"]
    assert trained["dev/mIoU"] > baseline["dev/mIoU"] + MIN_DEV_GAIN, (baseline, trained)

    out = tmp_path / "qs"
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "toy-clip (baseline, no training)" in md and "PixelCLIP (seed 0)" in md
    assert json.loads((out / "runs" / "results.json").read_text())["format"]
    grid = Image.open(out / "grid.png")
    assert grid.size[0] > 4 * 2 * 96 and grid.size[1] > 3 * 2 * 96  # 4 columns, 3 rows, 3x tiles
    chart = Image.open(out / "iou_per_class.png")  # per-class test IoU, baseline vs PixelCLIP
    assert chart.size[0] > 400 and chart.size[1] > 14 * 2 * 8
    # The cluster analysis of seed 0 on the test split (the files of tools/analyze_clusters.py).
    clusters = json.loads((out / "clusters" / "results.json").read_text())
    assert clusters["dataset"] == "toyworld_test_sem_seg" and clusters["images"] == 40
    assert clusters["classes"] == list(TOYWORLD_CLASSES) and len(clusters["nearest_names"]) == 32
    hungarian, majority = clusters["hungarian"], clusters["many_to_one"]
    assert hungarian["mIoU"] > 0
    assert hungarian["pixel_accuracy"] <= majority["pixel_accuracy"]  # votes are never worse
    for name in ("index.md", "embedding_map.png", "cluster_regions.png"):
        assert (out / "clusters" / name).stat().st_size > 0

    # The reported dev mIoU agrees with an independent count from the dev predictions.
    from detectron2.data import DatasetCatalog

    from pixelclip.toyworld.report import predict

    dicts = DatasetCatalog.get("toyworld_dev_sem_seg")
    model = qs.load_model(
        qs.build_cfg(str(qs.DEFAULT_CONFIG), ["SOLVER.MAX_ITER", "100"], str(out))
    )
    model.vocabulary_for("toyworld_dev_sem_seg")
    preds = predict(model, dicts)
    labels = [np.asarray(Image.open(d["sem_seg_file_name"])) for d in dicts]
    expected = _miou_from_predictions(preds, labels, len(TOYWORLD_CLASSES))
    assert baseline["dev/mIoU"] == pytest.approx(expected, abs=0.05)

    # --reuse-trained evaluates the trained run again instead of training it (and would train a
    # run whose saved config differs: k = 8 here is not reused).
    def no_training(*args):
        raise AssertionError(f"trained again: {args[-2:]}")

    monkeypatch.setattr(qs, "train", no_training)
    again = qs.main(["--quick", "--output-dir", str(out), "--skip-baseline", "--reuse-trained"])
    assert again["table"]["rows"][0] == trained
    assert qs.trained_before(
        str(qs.DEFAULT_CONFIG), ["SOLVER.MAX_ITER", "100"], str(out / "seed0"), 0
    )
    assert not qs.trained_before(
        str(qs.DEFAULT_CONFIG),
        ["SOLVER.MAX_ITER", "100", "MODEL.PROMPT.NUM_CLUSTERS", "8"],
        str(out / "seed0"),
        0,
    )

    # The trained run evaluates again with the documented command, in a fresh process, once the
    # world sits where the datasets registered at import look for it ($DETECTRON2_DATASETS/
    # toyworld, the quickstart's default world folder): same dev mIoU as in the table.
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    (datasets / "toyworld").symlink_to(out / "world")
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), HF_HUB_OFFLINE="1")
    argv = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file",
            str(qs.DEFAULT_CONFIG.relative_to(REPO)), "--eval-only",
            "MODEL.WEIGHTS", str(out / "seed0" / "model_final.pth"),
            "OUTPUT_DIR", str(tmp_path / "eval")]  # fmt: skip
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r"copypaste: ([\d.]+),", proc.stdout + proc.stderr)
    assert found, (proc.stdout + proc.stderr)[-3000:]
    assert float(found[1]) == pytest.approx(trained["dev/mIoU"], abs=0.05)
