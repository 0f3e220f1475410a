"""The cluster analysis of a trained checkpoint (``tools/analyze_clusters.py``).

:func:`analyze` runs the model once over a labelled dataset and writes into the output folder:

* ``results.json``: everything below, machine-readable (plus the (k, C) overlap matrix);
* ``index.md``: the tables and the two pictures;
* ``embedding_map.png``: the prompts and the class names in 2-D (PCA of their unit embeddings);
* ``cluster_regions.png``: for each cluster, the image regions with most pixels assigned to it.

The cluster map of an image is the per-pixel argmax over the k normalised prompt embeddings of
the cosine with the dense features, computed exactly as a test-time segmentation with k classes
(the config's test resize and protocol, METHOD §9.2 / §9.3). See
:mod:`pixelclip.analysis.clusters` for the metrics.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..inference.predictor import Predictor, parse_vocabulary, read_rgb_image
from . import clusters as C
from .pictures import GREY, class_colours, region_tile, write_embedding_map, write_region_grid
from .report import to_markdown

logger = logging.getLogger(__name__)

__all__ = ["NAME_PROMPTS", "analyze", "analyze_checkpoint"]

# How class names are embedded for the nearest-name table: "template" = the learnable classes'
# own template (MODEL.PROMPT.TEMPLATE), so that a name and a prompt differ only by the words
# inserted; "ensemble" = the test-time prompt ensemble (MODEL.PIXELCLIP.TEST.PROMPT_ENSEMBLE).
NAME_PROMPTS = ("template", "ensemble")


def analyze_checkpoint(cfg, weights: str, output: str | os.PathLike, **kwargs) -> dict:
    """:func:`analyze` of the model of ``cfg`` (a CfgNode or a config path) with ``weights``
    (read safely and strictly by :class:`~pixelclip.inference.Predictor`)."""
    if not weights:
        raise ValueError(
            "no checkpoint: pass --weights (or set MODEL.WEIGHTS); the learned classes of an "
            "untrained model are random token embeddings"
        )
    return analyze(Predictor(cfg, weights=weights), output, **kwargs)


def _dataset(name: str) -> tuple[list[dict], list[str], int]:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog.list():
        raise ValueError(f"dataset {name!r} is not registered; expected a labelled sem-seg dataset "
                         "such as toyworld_test_sem_seg or ade20k_150_val_sem_seg")  # fmt: skip
    meta = MetadataCatalog.get(name)
    classes = list(meta.get("stuff_classes", None) or [])
    if not classes:
        raise ValueError(f"dataset {name!r} has no stuff_classes in its metadata")
    dicts = DatasetCatalog.get(name)
    if not dicts or any("sem_seg_file_name" not in d for d in dicts):
        raise ValueError(f"dataset {name!r}: expected dicts with 'file_name' and "
                         "'sem_seg_file_name' (a labelled sem-seg dataset)")  # fmt: skip
    return dicts, classes, int(meta.get("ignore_label", 255))


def _segment(predictor, prompts, dicts, classes, ignore, tiles, side, progress):
    """One pass: the overlap matrix, pixels per cluster and the best region tiles per cluster."""
    k, num_classes = prompts.shape[0], len(classes)
    confusion = np.zeros((k, num_classes), dtype=np.int64)
    pixels = np.zeros(k, dtype=np.int64)
    best: list[list] = [[] for _ in range(k)]  # min-heaps of (pixels, -image index, tile)
    for i, d in enumerate(tqdm(dicts, desc="cluster maps", file=sys.stderr, disable=not progress)):
        rgb = read_rgb_image(d["file_name"])
        labels = C.read_label_map(d["sem_seg_file_name"], rgb.shape[:2], num_classes, ignore)
        cluster_map = predictor.embedding_scores(rgb, prompts).argmax(0).numpy()
        confusion += C.confusion_matrix(cluster_map, labels, k, num_classes, ignore)
        counts = np.bincount(cluster_map.ravel(), minlength=k)
        pixels += counts
        for j in np.nonzero(counts)[0]:
            if tiles and (len(best[j]) < tiles or counts[j] > best[j][0][0]):
                item = (int(counts[j]), -i, region_tile(rgb, cluster_map == j, side))
                (heapq.heappush if len(best[j]) < tiles else heapq.heapreplace)(best[j], item)
    tiles_of = [[t for _, _, t in sorted(heap, key=lambda x: (-x[0], -x[1]))] for heap in best]
    return confusion, pixels, tiles_of


def _matching(confusion, mapping, classes) -> dict:
    scores = C.scores_under_mapping(confusion, mapping)
    return {
        "mIoU": scores["mIoU"],
        "pixel_accuracy": scores["pixel_accuracy"],
        "iou": dict(zip(classes, scores["iou"])),
        "cluster_to_class": [classes[c] if c != C.UNMATCHED else None for c in mapping],
    }


def analyze(
    predictor: Predictor,
    output: str | os.PathLike,
    *,
    dataset: str | None = None,
    vocabulary=None,
    max_images: int = 0,
    tiles: int = 4,
    tile_side: int = 64,
    top: int = 3,
    name_prompts: str = "template",
    progress: bool = True,
) -> dict:
    """Analyse the learned classes of ``predictor.model`` and write the files of the module
    docstring into ``output``.

    Args:
        predictor: a PixelCLIP predictor of the trained checkpoint.
        output: the output folder (created).
        dataset: a registered labelled sem-seg dataset; None = nearest names and the embedding
            map only.
        vocabulary: names for the nearest-name table (see
            :func:`~pixelclip.inference.predictor.parse_vocabulary`); None = ``dataset``'s
            classes.
        max_images: the first N images of ``dataset`` (0 = all).
        tiles: region tiles per cluster in ``cluster_regions.png`` (0: no picture).
        tile_side: side of a tile in pixels.
        top: nearest names per cluster.
        name_prompts: one of :data:`NAME_PROMPTS`.
        progress: show a progress bar (stderr).

    Returns:
        The content of ``results.json``.
    """
    if name_prompts not in NAME_PROMPTS:
        raise ValueError(f"unknown name_prompts {name_prompts!r}; choose from {NAME_PROMPTS}")
    if vocabulary is None and dataset is None:
        raise ValueError("give a vocabulary of names, a labelled dataset, or both")
    if max_images < 0:
        raise ValueError(f"max_images must be >= 0, got {max_images}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    head = predictor.model.sem_seg_head
    with torch.no_grad():
        prompts = F.normalize(head.prompt_embeddings().float(), dim=-1).cpu()
    k = prompts.shape[0]
    names = parse_vocabulary(vocabulary if vocabulary is not None else dataset)
    templates = (head.prompts.template,) if name_prompts == "template" else head.prompt_templates
    name_emb = head.vocabulary_embedder(head.text, names, templates).float().cpu()
    nearest = C.nearest_names(prompts.numpy(), name_emb.numpy(), names, top)
    result: dict = {
        "num_clusters": k,
        "vocabulary": names,
        "name_templates": list(templates),
        "nearest_names": nearest,
        "files": {"results": "results.json", "index": "index.md"},
    }
    classes: list[str] = []
    hungarian = None
    if dataset is not None:
        dicts, classes, ignore = _dataset(dataset)
        dicts = dicts[:max_images] if max_images else dicts
        confusion, pixels, tiles_of = _segment(predictor, prompts, dicts, classes, ignore,
                                               tiles, tile_side, progress)  # fmt: skip
        hungarian = C.hungarian_match(confusion)
        many = C.many_to_one_match(confusion)
        result.update(
            dataset=dataset,
            images=len(dicts),
            classes=classes,
            labelled_pixels=int(confusion.sum()),
            cluster_pixels=pixels.tolist(),
            hungarian=_matching(confusion, hungarian, classes),
            many_to_one=_matching(confusion, many, classes),
            confusion=confusion.tolist(),
        )
        if tiles:
            _write_regions(out / "cluster_regions.png", result, hungarian, tiles_of, tiles,
                           tile_side)  # fmt: skip
            result["files"]["regions"] = "cluster_regions.png"
    result["embedding_map"] = _write_map(out / "embedding_map.png", prompts, name_emb, names,
                                         classes, hungarian)  # fmt: skip
    result["files"]["embedding_map"] = "embedding_map.png"
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / "index.md").write_text(to_markdown(result), encoding="utf-8")
    logger.info("cluster analysis written to %s", out)
    return result


def _write_map(path, prompts, name_emb, names, classes, hungarian) -> dict:
    coords, explained = C.pca_2d(torch.cat([prompts, name_emb]).numpy())
    k = prompts.shape[0]
    palette = class_colours(len(classes))
    prompt_colours = [
        palette[hungarian[j]] if hungarian is not None and hungarian[j] != C.UNMATCHED else GREY
        for j in range(k)
    ]
    name_colours = [palette[classes.index(n)] if n in classes else (40, 40, 40) for n in names]
    title = (
        f"PCA of the unit text embeddings: {k} learned classes (circles, c<j>) and {len(names)} "
        f"names (squares)\nPC1 {explained[0] * 100:.0f} %, PC2 {explained[1] * 100:.0f} % of the "
        "variance; colour = the class a cluster is matched to (grey: unmatched)"
    )
    write_embedding_map(path, coords, [f"c{j}" for j in range(k)] + list(names),
                        ["prompt"] * k + ["name"] * len(names), prompt_colours + name_colours,
                        title)  # fmt: skip
    return {
        "method": "PCA of the L2-normalised embeddings (= classical MDS of their chord distances)",
        "explained_variance": explained.tolist(),
        "prompts": coords[:k].tolist(),
        "names": coords[k:].tolist(),
    }


def _write_regions(path, result, hungarian, tiles_of, tiles, side) -> None:
    classes, pixels = result["classes"], np.asarray(result["cluster_pixels"])
    iou, palette = result["hungarian"]["iou"], class_colours(len(classes))
    matched = sorted((c, j) for j, c in enumerate(hungarian) if c != C.UNMATCHED and pixels[j])
    others = sorted((j for j, c in enumerate(hungarian) if c == C.UNMATCHED and pixels[j]),
                    key=lambda j: -pixels[j])  # fmt: skip
    rows = []
    for j in [j for _, j in matched] + others:
        c = hungarian[j]
        share = 100 * pixels[j] / max(pixels.sum(), 1)
        nearest = result["nearest_names"][j]["nearest"][0]["name"]
        if c == C.UNMATCHED:
            line1, colour = f"c{j} (unmatched)", GREY
        else:
            score = iou[classes[c]]
            line1 = f"c{j} -> {classes[c]}" + (f" ({score:.0f})" if score is not None else "")
            colour = palette[c]
        rows.append((line1, f"{share:.1f}% px, near {nearest}", colour, tiles_of[j]))
    write_region_grid(path, rows, tiles, side)
