"""The quickstart's pictures (pixelclip/toyworld/report.py): the seeded choice of grid images and
the per-class IoU bar chart."""

import math

import numpy as np
import pytest
from PIL import Image

from pixelclip.toyworld import TOYWORLD_CLASSES, report


def test_grid_sample_is_seeded_random_and_not_the_first_images():
    dicts = [{"image_id": f"{i:06d}"} for i in range(400)]
    a = report.grid_sample(dicts, 6, seed=0)
    assert a == report.grid_sample(dicts, 6, seed=0)  # same seed, same images
    assert a != report.grid_sample(dicts, 6, seed=1)
    ids = [int(d["image_id"]) for d in a]
    assert len(set(ids)) == 6 and ids == sorted(ids)
    assert ids != list(range(6))  # not simply the first six
    assert report.grid_sample(dicts[:3], 6) == dicts[:3]  # fewer images than asked: all of them
    assert report.grid_sample(dicts, 0) == []


def test_per_class_iou_reads_the_evaluator_keys():
    metrics = {f"IoU-{n}": float(i) for i, n in enumerate(TOYWORLD_CLASSES)}
    metrics["IoU-ball"] = None  # no ground truth, after a JSON round trip
    out = report.per_class_iou(metrics)
    assert list(out) == list(TOYWORLD_CLASSES) and out["grass"] == 1.0
    assert math.isnan(out["ball"])
    del metrics["IoU-car"]
    with pytest.raises(KeyError, match="IoU-car"):
        report.per_class_iou(metrics)


def test_iou_chart_bar_lengths_are_proportional_to_iou(tmp_path):
    base = {n: 10.0 + 5 * i for i, n in enumerate(TOYWORLD_CLASSES)}
    ours = {n: 80.0 - 4 * i for i, n in enumerate(TOYWORLD_CLASSES)}
    base["star"] = float("nan")
    ours["car"] = 0.1  # under half a pixel: no bar (and no error)
    path = tmp_path / "iou.png"
    report.write_iou_chart(path, {"baseline": base, "PixelCLIP": ours})
    image = np.asarray(Image.open(path).convert("RGB"))
    axis_w = 400  # pixels for 0..100 % (the chart's fixed axis)
    for m, ious in enumerate((base, ours)):
        colour = np.array(report.CHART_COLOURS[m])
        rows = np.flatnonzero((image == colour).all(-1).sum(1) > 20)  # bar rows, not the legend
        bars = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)  # runs of rows = bars
        got = [int((image[b[0]] == colour).all(-1).sum()) for b in bars]
        # Classes in order; a NaN draws nothing.
        expected = [round(axis_w * v / 100) for v in ious.values() if math.isfinite(v)]
        expected = [e for e in expected if e > 0]
        assert got == expected
        assert all(len(b) == len(bars[0]) > 3 for b in bars)
    with pytest.raises(ValueError, match="models"):
        report.write_iou_chart(path, {})


def test_chart_models_average_the_seeds_per_class():
    def result(values):
        metrics = {f"IoU-{n}": v for n, v in zip(TOYWORLD_CLASSES, values)}
        return {"test": {"entry": {"metrics": metrics}}}

    n = len(TOYWORLD_CLASSES)
    base = result([5.0] * n)
    runs = [result([10.0] * (n - 1) + [None]), result([20.0] * (n - 1) + [40.0])]
    models = report.chart_models(base, "PixelCLIP", runs)
    assert list(models) == ["toy-clip (baseline)", "PixelCLIP (mean of 2 seeds)"]
    mean = models["PixelCLIP (mean of 2 seeds)"]
    assert mean["sky"] == 15.0 and mean[TOYWORLD_CLASSES[-1]] == 40.0  # None left out
    assert list(report.chart_models(None, "P", runs[:1])) == ["P"]
