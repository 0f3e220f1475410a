"""The quickstart's report: the results table (markdown), predictions and the picture grid.

Used by :mod:`pixelclip.toyworld.quickstart`; the table has one row per model and seed (plus
mean +- std over seeds) and the columns mIoU / stuff / things on the dev and test splits.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from .world import TOYWORLD_CLASSES

__all__ = ["PALETTE", "SPLITS", "mean_std", "predict", "summarise", "to_markdown", "write_grid"]

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


def write_grid(path: Path, dicts: list[dict], columns: dict[str, list], scale: int = 2) -> None:
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
