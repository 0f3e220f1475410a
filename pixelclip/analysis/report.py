"""``index.md`` of the cluster analysis: the tables of ``results.json`` and its pictures."""

from __future__ import annotations

import math

__all__ = ["to_markdown"]


def _num(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.1f}"


def _names(entry: dict) -> str:
    return ", ".join(f"{n['name']} ({n['cosine']:.3f})" for n in entry["nearest"])


def to_markdown(result: dict) -> str:
    """The analysis as markdown (see :func:`pixelclip.analysis.run.analyze` for the keys)."""
    k, nearest = result["num_clusters"], result["nearest_names"]
    templates = " / ".join(f"`{t}`" for t in result["name_templates"])
    lines = [
        "# What the learned classes are",
        "",
        f"- k = {k} learned classes; {len(result['vocabulary'])} vocabulary names, embedded "
        f"with {templates}.",
    ]
    hungarian = result.get("hungarian")
    if hungarian is not None:
        pixels = result["cluster_pixels"]
        total = max(sum(pixels), 1)
        lines += [
            f"- dataset `{result['dataset']}`: {result['images']} images, "
            f"{result['labelled_pixels']} labelled pixels, {len(result['classes'])} classes.",
            "",
            "## Unsupervised segmentation with the clusters",
            "",
            "Every pixel takes the cluster whose prompt embedding has the highest cosine with its "
            "dense feature; clusters are mapped to classes by pixel overlap over the whole "
            "dataset. Hungarian: one cluster per class (pixels of unmatched clusters count as "
            "wrong); many-to-one: each cluster takes its majority class.",
            "",
            "| mapping | mIoU (%) | pixel accuracy (%) |",
            "|---|---|---|",
            f"| Hungarian (one-to-one) | {_num(hungarian['mIoU'])} | "
            f"{_num(hungarian['pixel_accuracy'])} |",
            f"| many-to-one (majority class) | {_num(result['many_to_one']['mIoU'])} | "
            f"{_num(result['many_to_one']['pixel_accuracy'])} |",
            "",
            "| class | Hungarian cluster | IoU (%) | many-to-one clusters | nearest names of the "
            "Hungarian cluster (cosine) |",
            "|---|---|---|---|---|",
        ]
        h_map, m_map = hungarian["cluster_to_class"], result["many_to_one"]["cluster_to_class"]
        for name in result["classes"]:
            js = [j for j, c in enumerate(h_map) if c == name]
            many = ", ".join(f"c{j}" for j, c in enumerate(m_map) if c == name) or "-"
            cluster = f"c{js[0]}" if js else "none"
            names = _names(nearest[js[0]]) if js else "-"
            lines.append(f"| {name} | {cluster} | {_num(hungarian['iou'][name])} | {many} | "
                         f"{names} |")  # fmt: skip
    lines += ["", "## Nearest names of every learned class", ""]
    if hungarian is not None:
        lines += [
            "| cluster | pixels (%) | Hungarian class | nearest names (cosine) |",
            "|---|---|---|---|",
        ]
        for j, entry in enumerate(nearest):
            share = 100 * pixels[j] / total
            matched = hungarian["cluster_to_class"][j] or "-"
            lines.append(f"| c{j} | {share:.1f} | {matched} | {_names(entry)} |")
    else:
        lines += ["| cluster | nearest names (cosine) |", "|---|---|"]
        lines += [f"| c{j} | {_names(entry)} |" for j, entry in enumerate(nearest)]
    method = result["embedding_map"]["method"]
    lines += ["", "## Pictures", "", f"Embedding map ({method}):", "",
              "![embedding map](embedding_map.png)"]  # fmt: skip
    if "regions" in result["files"]:
        lines += [
            "",
            "Regions assigned to each cluster (the images where it covers most pixels; other "
            "pixels dimmed), with its Hungarian class and IoU (%):",
            "",
            "![cluster regions](cluster_regions.png)",
        ]
    return "\n".join(lines) + "\n"
