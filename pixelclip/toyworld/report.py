"""The quickstart's report: the results table (markdown), predictions and the pictures.

Used by :mod:`pixelclip.toyworld.quickstart`; the table has one row per model and seed (plus
mean +- std over seeds) and the columns mIoU / stuff / things on the dev and test splits. The
pictures: a grid of test images (a seeded random choice, :func:`grid_sample`) with their ground
truth and each model's prediction (:func:`write_grid`), and a bar chart of the per-class test
IoU of each model (:func:`write_iou_chart`).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from .world import TOYWORLD_CLASSES

__all__ = [
    "PALETTE",
    "SPLITS",
    "chart_models",
    "grid_sample",
    "mean_std",
    "per_class_iou",
    "predict",
    "summarise",
    "to_markdown",
    "write_grid",
    "write_iou_chart",
]

SPLITS = ("dev", "test")
# Fixed colours of the 14 ToyWorld classes in the grid (RGB), chosen to differ from each other.
PALETTE = [
    (135, 206, 250), (34, 139, 34), (0, 0, 205), (238, 214, 175), (105, 105, 105),
    (255, 255, 255), (220, 20, 60), (160, 82, 45), (0, 100, 0), (255, 215, 0),
    (255, 0, 255), (0, 206, 209), (0, 0, 0), (138, 43, 226),
]  # fmt: skip


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(baseline: dict | None, variants: dict[str, list[dict]], seeds: list[int]) -> dict:
    """Rows of the results table: the baseline, then for each trained variant (row label ->
    results per seed) every seed and, with several seeds, the mean +- std over seeds."""
    keys = [(s, k) for s in SPLITS for k in ("mIoU", "stuff", "things")]
    rows = []
    if baseline is not None:
        rows.append(
            {
                "model": "toy-clip (baseline, no training)",
                **{f"{s}/{k}": baseline[s][k] for s, k in keys},
            }
        )
    for label, trained in variants.items():
        for seed, res in zip(seeds, trained):
            rows.append(
                {"model": f"{label} (seed {seed})", **{f"{s}/{k}": res[s][k] for s, k in keys}}
            )
        if len(trained) > 1:
            row = {"model": f"{label} (mean ± std, {len(trained)} seeds)"}
            for s, k in keys:
                row[f"{s}/{k}"], row[f"{s}/{k}_std"] = mean_std([r[s][k] for r in trained])
            rows.append(row)
    return {"columns": [f"{s}/{k}" for s, k in keys], "rows": rows}


def to_markdown(table: dict, notes: list[str]) -> str:
    cols = table["columns"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for row in table["rows"]:
        cells = []
        for c in cols:
            v = row[c]
            cell = "n/a" if v is None or not math.isfinite(v) else f"{v:.1f}"
            if f"{c}_std" in row:
                cell += f" ± {row[c + '_std']:.1f}"
            cells.append(cell)
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    body = "\n".join(["# ToyWorld quickstart results", "", *lines, ""])
    return body + "\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def predict(model, dicts: list[dict]):
    """Argmax label maps (H, W) uint8 of the given sem-seg dataset dicts (images at full size)."""
    import numpy as np
    import torch
    from detectron2.data.detection_utils import read_image

    out = []
    with torch.no_grad():
        for d in dicts:
            image = read_image(d["file_name"], format="RGB")
            tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            scores = model([{"image": tensor, "height": d["height"], "width": d["width"]}])
            out.append(scores[0]["sem_seg"].argmax(0).to(torch.uint8).numpy())
    return out


def grid_sample(dicts: list[dict], count: int, seed: int = 0) -> list[dict]:
    """A seeded random choice of ``count`` dataset dicts (without repeats, in dataset order), so
    that the grid shows neither hand-picked nor merely the first images."""
    import numpy as np

    count = min(max(count, 0), len(dicts))
    picked = np.random.default_rng(seed).choice(len(dicts), size=count, replace=False)
    return [dicts[i] for i in sorted(int(i) for i in picked)]


def per_class_iou(metrics: dict) -> dict[str, float]:
    """``{class: IoU (%)}`` of the ToyWorld classes from SemSegEvaluator's ``IoU-<class>`` keys
    (NaN where the class has no ground truth: None after a JSON round trip)."""
    out = {}
    for name in TOYWORLD_CLASSES:
        if f"IoU-{name}" not in metrics:
            raise KeyError(f"no 'IoU-{name}' in the metrics (keys: {sorted(metrics)[:8]} ...)")
        value = metrics[f"IoU-{name}"]
        out[name] = float("nan") if value is None else float(value)
    return out


def chart_models(
    baseline: dict | None, label: str, trained: list[dict], split: str = "test"
) -> dict[str, dict[str, float]]:
    """The bars of :func:`write_iou_chart`: the baseline's per-class IoU and the mean over seeds
    of the trained runs' (results as :func:`summarise` takes them, with their evaluator
    ``entry``); a class without ground truth in a run is left out of its mean."""
    models = {}
    if baseline is not None:
        models["toy-clip (baseline)"] = per_class_iou(baseline[split]["entry"]["metrics"])
    if trained:
        runs = [per_class_iou(r[split]["entry"]["metrics"]) for r in trained]
        mean = {}
        for name in TOYWORLD_CLASSES:
            values = [r[name] for r in runs if math.isfinite(r[name])]
            mean[name] = statistics.fmean(values) if values else float("nan")
        models[f"{label} (mean of {len(runs)} seeds)" if len(runs) > 1 else label] = mean
    return models


def write_grid(path: Path, dicts: list[dict], columns: dict[str, list], scale: int = 3) -> None:
    """PNG: one row per image, columns image | ground truth | each model; a colour legend below."""
    import numpy as np
    from PIL import Image, ImageDraw

    palette = np.array(PALETTE + [(128, 128, 128)] * (256 - len(PALETTE)), dtype=np.uint8)
    images = [np.asarray(Image.open(d["file_name"]).convert("RGB")) for d in dicts]
    labels = [np.asarray(Image.open(d["sem_seg_file_name"])) for d in dicts]
    panels = {"image": images, "ground truth": [palette[x] for x in labels]}
    panels.update({name: [palette[x] for x in preds] for name, preds in columns.items()})
    side, pad, head = images[0].shape[0] * scale, 4, 16
    legend_rows = math.ceil(len(TOYWORLD_CLASSES) / 4)
    width = len(panels) * (side + pad) + pad
    height = head + len(dicts) * (side + pad) + pad + legend_rows * 16 + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, (title, tiles) in enumerate(panels.items()):
        x = pad + c * (side + pad)
        draw.text((x, 2), title, fill=(0, 0, 0))
        for r, tile in enumerate(tiles):
            big = Image.fromarray(tile).resize((side, side), Image.NEAREST)
            canvas.paste(big, (x, head + r * (side + pad)))
    y0 = head + len(dicts) * (side + pad) + pad
    col_w = width // 4
    for i, name in enumerate(TOYWORLD_CLASSES):
        x, y = pad + (i % 4) * col_w, y0 + (i // 4) * 16
        draw.rectangle([x, y + 2, x + 10, y + 12], fill=PALETTE[i], outline=(0, 0, 0))
        draw.text((x + 14, y + 1), name, fill=(0, 0, 0))
    canvas.save(path)


# Bar colours of the models in the IoU chart, in the order given (baseline grey, then blues).
CHART_COLOURS = [(150, 150, 150), (31, 119, 180), (255, 127, 14), (44, 160, 44)]


def write_iou_chart(
    path: Path, models: dict[str, dict[str, float]], title: str = "test IoU per class (%)"
) -> None:
    """PNG: one group of horizontal bars per class (one bar per model, length = IoU in percent on
    a 0..100 axis with grid lines every 20), a legend of the models on top.

    Args:
        path: output PNG.
        models: row label -> {class name: IoU (%)} (:func:`per_class_iou`); at most 4 models.
            NaN (no ground truth) draws no bar.
        title: text above the chart.
    """
    from PIL import Image, ImageDraw

    if not models or len(models) > len(CHART_COLOURS):
        raise ValueError(f"write_iou_chart: 1 to {len(CHART_COLOURS)} models, got {len(models)}")
    bar, gap, label_w, axis_w, pad = 10, 8, 60, 400, 8
    head = 18 + 14 * len(models)
    group = bar * len(models) + gap
    width = pad + label_w + axis_w + 40
    height = head + group * len(TOYWORLD_CLASSES) + 24
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), title, fill=(0, 0, 0))
    for m, label in enumerate(models):
        y = 18 + 14 * m
        draw.rectangle([pad, y + 1, pad + 10, y + 11], fill=CHART_COLOURS[m])
        draw.text((pad + 14, y), label, fill=(0, 0, 0))
    x0, y_end = pad + label_w, head + group * len(TOYWORLD_CLASSES)
    for tick in range(0, 101, 20):
        x = x0 + round(axis_w * tick / 100)
        draw.line([x, head - 2, x, y_end], fill=(220, 220, 220) if tick else (0, 0, 0))
        draw.text((x - 6, y_end + 4), str(tick), fill=(0, 0, 0))
    for c, name in enumerate(TOYWORLD_CLASSES):
        y = head + c * group
        draw.text((pad, y + (group - gap) // 2 - 6), name, fill=(0, 0, 0))
        for m, ious in enumerate(models.values()):
            value = ious[name]
            length = round(axis_w * min(value, 100.0) / 100) if math.isfinite(value) else 0
            if length > 0:  # below half a pixel (or NaN): no bar
                top = y + m * bar
                draw.rectangle([x0 + 1, top, x0 + length, top + bar - 2], fill=CHART_COLOURS[m])
    canvas.save(path)
