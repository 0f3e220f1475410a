"""Results tables of benchmark sweeps: the paper-style markdown table and a JSON record.

A *run* is one evaluation of one model on some benchmarks (:func:`make_run`): a JSON-able dict
with the model's row label, the protocol, the full config, the command line, the date and, per
benchmark, the entry returned by :func:`pixelclip.evaluation.evaluate.evaluate` (status, full
SemSegEvaluator metrics, image counts). A results file holds a list of runs; :func:`merge` joins
files or lists of runs, :func:`to_markdown` renders rows = models, columns = benchmarks (or class
groups of a benchmark, see :class:`Column`), mIoU with one decimal as in docs/METHOD.md §10.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .evaluate import subset_miou

__all__ = [
    "BENCHMARK_ALIASES",
    "BENCHMARK_HEADERS",
    "PAPER_BENCHMARKS",
    "Column",
    "load_runs",
    "make_run",
    "merge",
    "model_label",
    "resolve_benchmark",
    "to_markdown",
    "write_results",
]

RESULTS_FORMAT = "pixelclip-evaluation"
RESULTS_VERSION = 1

# Short names accepted on the command line.
BENCHMARK_ALIASES: dict[str, str] = {
    "coco-stuff": "coco_stuff_171_val_sem_seg",
    "ade-150": "ade20k_150_val_sem_seg",
    "context-59": "pascal_context_59_val_sem_seg",
    "cityscapes": "cityscapes_19_val_sem_seg",
    "voc-20": "voc_20_val_sem_seg",
    "voc-21": "voc_21_val_sem_seg",
    "context-60": "pascal_context_60_val_sem_seg",
    "coco-object": "coco_object_81_val_sem_seg",
    "context-459": "pascal_context_459_val_sem_seg",
    "ade-847": "ade20k_847_val_sem_seg",
}
# Column headers, in the order columns are shown (the paper's five first).
BENCHMARK_HEADERS: dict[str, str] = {
    "coco_stuff_171_val_sem_seg": "COCO-Stuff",
    "ade20k_150_val_sem_seg": "ADE-150",
    "pascal_context_59_val_sem_seg": "Context-59",
    "cityscapes_19_val_sem_seg": "Cityscapes",
    "voc_20_val_sem_seg": "VOC-20",
    "voc_21_val_sem_seg": "VOC-21",
    "pascal_context_60_val_sem_seg": "Context-60",
    "coco_object_81_val_sem_seg": "COCO-Object",
    "pascal_context_459_val_sem_seg": "PC-459",
    "ade20k_847_val_sem_seg": "ADE-847",
}
PAPER_BENCHMARKS: tuple[str, ...] = tuple(BENCHMARK_HEADERS)[:5]

# Row labels of the image towers, as the paper names them.
_CLIP_LABELS = {
    "ViT-B-16": "CLIP ViT-B/16",
    "ViT-L-14": "CLIP ViT-L/14",
    "convnext_base_w_320": "OpenCLIP ConvNeXt-B",
    "convnext_large_d_320": "OpenCLIP ConvNeXt-L",
}
SUBSET_MARK = "†"


def resolve_benchmark(name: str) -> str:
    """The dataset name of an alias (``"ade-150"`` -> ``"ade20k_150_val_sem_seg"``); other names
    are returned unchanged."""
    return BENCHMARK_ALIASES.get(name.strip().lower(), name.strip())


def model_label(clip_model_name: str, weights: str = "") -> str:
    """Row label: ``"CLIP ViT-B/16 (baseline)"`` without weights, else ``"PixelCLIP <run>/<file>"``
    (the checkpoint's folder and file stem, e.g. ``"PixelCLIP vitb16_sa1b/model_final"``)."""
    if not weights:
        return f"{_CLIP_LABELS.get(clip_model_name, f'CLIP {clip_model_name}')} (baseline)"
    path = Path(weights)
    name = f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem
    return f"PixelCLIP {name}"


@dataclass(frozen=True)
class Column:
    """One column of the table: a benchmark's mIoU, or the mIoU over a group of its classes.

    Attributes:
        benchmark: dataset name.
        header: column header ("" = the benchmark's short name).
        classes: class names (as in ``stuff_classes``) of a group, e.g. the "thing" classes;
            None = all classes (the benchmark's mIoU).
    """

    benchmark: str
    header: str = ""
    classes: tuple[str, ...] | None = None

    @property
    def title(self) -> str:
        return self.header or BENCHMARK_HEADERS.get(self.benchmark, self.benchmark)


def make_run(
    model: str,
    benchmarks: Mapping[str, dict],
    *,
    protocol: str,
    weights: str = "",
    config: str = "",
    command: str = "",
    max_images: int | None = None,
    date: str | None = None,
    **extra,
) -> dict:
    """A JSON-able record of one evaluation.

    Args:
        model: row label (see :func:`model_label`).
        benchmarks: ``{dataset name: entry}`` as returned by ``evaluate``.
        protocol: "whole" or "slide".
        weights: checkpoint path ("" = baseline CLIP).
        config: the full config (``cfg.dump()``).
        command: the command line.
        max_images: the per-benchmark image cap (None = all images).
        date: ISO date (default: now, UTC).
        **extra: further fields (e.g. ``preset``, ``dense_variant``, ``num_processes``).
    """
    return {
        "model": model,
        "weights": weights,
        "protocol": protocol,
        "date": date or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "max_images": max_images,
        **extra,
        "benchmarks": {name: dict(entry) for name, entry in benchmarks.items()},
        "config": config,
    }


def load_runs(path: str | os.PathLike) -> list[dict]:
    """The runs of a results.json written by :func:`write_results`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a results file of this format.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from e
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        raise ValueError(
            f"{path}: not a results file of tools/evaluate_all.py (expected a JSON object with "
            f'"format": "{RESULTS_FORMAT}" and a list "runs")'
        )
    runs = data.get("runs")
    if not isinstance(runs, list) or not all(
        isinstance(r, dict) and "model" in r and "benchmarks" in r for r in runs
    ):
        raise ValueError(f'{path}: "runs" must be a list of objects with "model" and "benchmarks"')
    return runs


def merge(*sources: str | os.PathLike | Sequence[dict]) -> list[dict]:
    """Join runs from results files and/or lists of runs, in order; exact duplicates are dropped.

    In the table, a model's cell for a benchmark shows the *last* successful run of that model
    (and protocol) on that benchmark, so merging adds columns to a row or updates them.
    """
    merged: list[dict] = []
    for source in sources:
        runs = load_runs(source) if isinstance(source, (str, os.PathLike)) else list(source)
        merged.extend(r for r in runs if r not in merged)
    return merged


def _json_safe(value):
    """NaN/inf -> None (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _format(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.1f}"


def _default_columns(runs: Iterable[dict]) -> list[Column]:
    seen: list[str] = []
    for run in runs:
        seen.extend(name for name in run["benchmarks"] if name not in seen)
    order = list(BENCHMARK_HEADERS)
    known = [name for name in order if name in seen]
    return [Column(name) for name in known + [n for n in seen if n not in order]]


def _last_ok(row_runs: Sequence[dict], benchmark: str) -> dict | None:
    """The last successful entry of a row's runs on a benchmark."""
    entries = [r["benchmarks"].get(benchmark) for r in row_runs]
    ok = [e for e in entries if e and e.get("status") == "ok" and e.get("metrics")]
    return ok[-1] if ok else None


def _preset_of(run: dict) -> str:
    return run.get("preset") or "paper"


def _average_benchmarks(runs: Sequence[dict]) -> tuple[str, ...] | None:
    """The benchmarks of the averaged preset (training-free) if every run used it, else None."""
    from .presets import PRESETS

    names = {_preset_of(r) for r in runs}
    if len(names) != 1:
        return None
    preset = PRESETS.get(names.pop())
    return preset.benchmarks if preset is not None and preset.average else None


def to_markdown(runs: Sequence[dict], columns: Sequence[Column] | None = None) -> str:
    """The results as a markdown document: the table and notes.

    Rows are models in order of first appearance (with the protocol and preset in the label when
    the runs mix them); a cell is the mIoU (or a class group's mIoU) with one decimal from the
    last successful run of that row on that benchmark, ``"<v>†"`` when only a subset of the
    images was evaluated (listed in the notes), ``"missing"`` when the data was not found,
    ``"-"`` when not evaluated, ``"n/a"`` when undefined. When every run used a preset with an
    average (``training-free``), a last column averages its benchmarks (``"-"`` unless a row
    has all of them). The notes state the protocol of each preset and any PAMR use.

    Args:
        runs: runs as made by :func:`make_run` (e.g. from :func:`merge`).
        columns: the columns (default: one per benchmark found in the runs).
    """
    from .presets import PRESETS

    columns = list(columns) if columns is not None else _default_columns(runs)
    protocols = sorted({run["protocol"] for run in runs})
    presets = sorted({_preset_of(run) for run in runs})
    average_of = _average_benchmarks(runs)
    rows: dict[str, list[dict]] = {}
    for run in runs:
        label = run["model"]
        tags = [run["protocol"]] if len(protocols) > 1 else []
        tags += [_preset_of(run)] if len(presets) > 1 else []
        label = f"{label} [{', '.join(tags)}]" if tags else label
        rows.setdefault(label, []).append(run)

    subset_notes, missing_notes, pamr_notes = [], [], []
    titles = [c.title for c in columns]
    if average_of:
        titles.append(f"Avg ({len(average_of)})")
    lines = [
        "| model | " + " | ".join(titles) + " |",
        "|---" * (len(titles) + 1) + "|",
    ]
    for label, row_runs in rows.items():
        cells = []
        for column in columns:
            entries = [r["benchmarks"].get(column.benchmark) for r in row_runs]
            entries = [e for e in entries if e is not None]
            entry = _last_ok(row_runs, column.benchmark)
            if entry is not None:
                metrics = entry["metrics"]
                value = (
                    metrics.get("mIoU")
                    if column.classes is None
                    else subset_miou(metrics, column.classes)
                )
                cell = _format(value)
                if entry.get("subset"):
                    cell += SUBSET_MARK
                    note = (
                        f"{label} / {column.title}: first {entry['num_images']} of "
                        f"{entry['num_images_total']} images"
                    )
                    if note not in subset_notes:
                        subset_notes.append(note)
                if entry.get("pamr"):
                    note = f"{label} / {column.title}: {entry['pamr']['steps']} steps"
                    if note not in pamr_notes:
                        pamr_notes.append(note)
            elif entries:
                cell = "missing"
                note = f"{label} / {column.title}"
                if note not in missing_notes:
                    missing_notes.append(note)
            else:
                cell = "-"
            cells.append(cell)
        if average_of:
            found = [_last_ok(row_runs, name) for name in average_of]
            values = [e["metrics"].get("mIoU") if e else None for e in found]
            if all(v is not None and math.isfinite(v) for v in values):
                cell = _format(sum(values) / len(values))
                cell += SUBSET_MARK if any(e.get("subset") for e in found) else ""
            else:
                cell = "-"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    notes = [f"mIoU (%), protocol: {', '.join(protocols) or '-'}."]
    for name in presets:
        summary = PRESETS[name].summary if name in PRESETS else name
        notes.append(f"Preset {summary}.")
    if average_of:
        headers = ", ".join(BENCHMARK_HEADERS.get(n, n) for n in average_of)
        notes.append(f"Avg ({len(average_of)}): mean mIoU over {headers}.")
    if pamr_notes:
        notes.append("PAMR on: " + "; ".join(pamr_notes) + ".")
    if subset_notes:
        notes.append(
            f"{SUBSET_MARK} SUBSET ONLY, not comparable to full-benchmark numbers: "
            + "; ".join(subset_notes)
            + "."
        )
    if missing_notes:
        notes.append(
            "missing: the benchmark's data was not found (prepare it with datasets/prepare_*.py; "
            "the message is in results.json): " + "; ".join(missing_notes) + "."
        )
    notes = [f"- {note}" for note in notes]
    return "\n".join(["# Semantic segmentation results", "", *lines, "", *notes]) + "\n"


def write_results(
    runs: Sequence[dict],
    folder: str | os.PathLike,
    columns: Sequence[Column] | None = None,
) -> tuple[Path, Path]:
    """Write ``results.json`` (all runs, strict JSON: NaN -> null) and ``results.md``
    (:func:`to_markdown`) into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "results.json", folder / "results.md"
    data = {"format": RESULTS_FORMAT, "version": RESULTS_VERSION, "runs": _json_safe(list(runs))}
    json_path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    md_path.write_text(to_markdown(runs, columns), encoding="utf-8")
    return json_path, md_path
