"""What the k label-free clusters learned, as pure functions of embeddings and label maps.

The k learnable classes of PixelCLIP (docs/METHOD.md §3) are text embeddings t_1..t_k. Two views
of them are computed here:

* **Nearest names** (:func:`nearest_names`): the cosine between each normalised t_j and the
  normalised text embeddings of a vocabulary of real class names.
* **Unsupervised-segmentation scores** (:func:`confusion_matrix`, :func:`hungarian_match`,
  :func:`many_to_one_match`, :func:`scores_under_mapping`): every pixel gets the cluster
  argmax_j cos(f(p), t_j) of the dense test-time features f (METHOD §9.2), the clusters are mapped
  to the C ground-truth classes, and mIoU / pixel accuracy are computed under that mapping. This
  is the protocol of PiCIE (Cho et al., CVPR 2021) and STEGO (Hamilton et al., ICLR 2022): a
  one-to-one Hungarian matching on the (k, C) pixel-overlap matrix of the whole dataset, and the
  cheaper "many-to-one" variant in which every cluster takes its majority class.

Everything is numpy (float64 for the scores); the model is run by :mod:`pixelclip.analysis.run`.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from ..data.sa1b import printable_path, regular_file_problem
from ..evaluation.sem_seg import SINGLE_CHANNEL_MODES, LabelMapError

__all__ = [
    "UNMATCHED",
    "confusion_matrix",
    "cosine_matrix",
    "hungarian_match",
    "many_to_one_match",
    "nearest_names",
    "pca_2d",
    "read_label_map",
    "scores_under_mapping",
]

# The class index of a cluster that no class is mapped to.
UNMATCHED = -1


def _unit_rows(x, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"{what}: expected a non-empty (N, D) matrix, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError(f"{what}: every row must be finite and non-zero")
    return x / norms


def cosine_matrix(a, b) -> np.ndarray:
    """(N, M) float64 cosines between the rows of ``a`` (N, D) and ``b`` (M, D)."""
    a, b = _unit_rows(a, "embeddings a"), _unit_rows(b, "embeddings b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding widths differ: {a.shape[1]} != {b.shape[1]}")
    return a @ b.T


def nearest_names(prompts, names_embeddings, names: list[str], top: int = 3) -> list[dict]:
    """The ``top`` nearest vocabulary names of every learned class, by cosine.

    Args:
        prompts: (k, D) prompt embeddings t_j (normalised here).
        names_embeddings: (C, D) text embeddings of the names (normalised here).
        names: the C names, index-aligned with ``names_embeddings``.
        top: names per cluster (at most C are returned).

    Returns:
        k dicts ``{"cluster": j, "nearest": [{"name", "cosine"}, ...]}``, best first (ties keep
        the vocabulary's order).
    """
    if len(names) != len(names_embeddings):
        raise ValueError(f"{len(names)} names but {len(names_embeddings)} name embeddings")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    cos = cosine_matrix(prompts, names_embeddings)
    out = []
    for j, row in enumerate(cos):
        order = np.argsort(-row, kind="stable")[:top]
        out.append(
            {
                "cluster": j,
                "nearest": [{"name": names[c], "cosine": float(row[c])} for c in order],
            }
        )
    return out


def confusion_matrix(clusters, labels, num_clusters: int, num_classes: int, ignore_label=255):
    """Pixel counts (k, C) int64: entry (j, c) = pixels of cluster j whose ground truth is c.

    Args:
        clusters: int array of cluster indices in 0..k-1 (any shape).
        labels: int array of the same shape, classes in 0..C-1 or ``ignore_label`` (left out).
    """
    clusters, labels = np.asarray(clusters), np.asarray(labels)
    if clusters.shape != labels.shape:
        raise ValueError(f"cluster map {clusters.shape} and label map {labels.shape} differ")
    valid = labels != ignore_label
    c, y = clusters[valid].astype(np.int64), labels[valid].astype(np.int64)
    if c.size and (c.min() < 0 or c.max() >= num_clusters):
        raise ValueError(f"cluster indices must be in 0..{num_clusters - 1}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1} or {ignore_label}")
    counts = np.bincount(c * num_classes + y, minlength=num_clusters * num_classes)
    return counts.reshape(num_clusters, num_classes)


def hungarian_match(confusion) -> np.ndarray:
    """One-to-one mapping of clusters to classes that maximises the matched pixel overlap.

    ``scipy.optimize.linear_sum_assignment(confusion, maximize=True)`` on the (k, C) overlap
    matrix. With k > C, k - C clusters stay unmatched; with k < C, C - k classes get no cluster.
    A pair with zero overlap is left unmatched too: it changes no score (its IoU is 0 either way)
    and would only name a cluster after a class it never covers.

    Returns:
        (k,) int64: the class of each cluster, or :data:`UNMATCHED`.
    """
    confusion = np.asarray(confusion)
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    mapping = np.full(confusion.shape[0], UNMATCHED, dtype=np.int64)
    overlap = confusion[rows, cols] > 0
    mapping[rows[overlap]] = cols[overlap]
    return mapping


def many_to_one_match(confusion) -> np.ndarray:
    """Every cluster to its majority class (several clusters may share one); a cluster without
    labelled pixels is :data:`UNMATCHED`. Returns (k,) int64."""
    confusion = np.asarray(confusion)
    mapping = confusion.argmax(1).astype(np.int64)
    mapping[confusion.sum(1) == 0] = UNMATCHED
    return mapping


def scores_under_mapping(confusion, cluster_to_class) -> dict:
    """mIoU and pixel accuracy (percent) when every pixel takes the class of its cluster.

    A pixel of an unmatched cluster (:data:`UNMATCHED`) counts as wrong: it is a miss (false
    negative) of its true class and a false positive of no class. A class that no cluster maps
    to has IoU 0. As in detectron2's ``SemSegEvaluator`` (METHOD §9.4), the mean runs over the
    classes present in the ground truth. (STEGO's implementation gathers the unmatched clusters
    into one extra row and also averages that row's IoU of 0 into its mean when k > C; this
    function does not.)

    Args:
        confusion: (k, C) pixel counts of :func:`confusion_matrix`.
        cluster_to_class: (k,) class per cluster, or :data:`UNMATCHED`.

    Returns:
        ``{"mIoU", "pixel_accuracy", "iou"}``: ``iou`` is the list of C per-class IoUs in
        percent, None for a class absent from the ground truth.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    mapping = np.asarray(cluster_to_class, dtype=np.int64)
    k, num_classes = confusion.shape
    if mapping.shape != (k,):
        raise ValueError(f"cluster_to_class: expected shape ({k},), got {mapping.shape}")
    if np.any((mapping < UNMATCHED) | (mapping >= num_classes)):
        raise ValueError(f"cluster_to_class: values must be in 0..{num_classes - 1} or -1")
    predicted = np.zeros((num_classes, num_classes))  # (predicted class, true class)
    matched = mapping != UNMATCHED
    np.add.at(predicted, mapping[matched], confusion[matched])
    tp = np.diag(predicted)
    ground_truth = confusion.sum(0)
    union = ground_truth + predicted.sum(1) - tp
    present = ground_truth > 0
    iou = np.divide(tp, union, out=np.zeros(num_classes), where=union > 0)
    total = ground_truth.sum()
    return {
        "mIoU": float(iou[present].mean() * 100) if present.any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total * 100) if total else float("nan"),
        "iou": [float(v * 100) if p else None for v, p in zip(iou, present)],
    }


def pca_2d(x) -> tuple[np.ndarray, np.ndarray]:
    """Project the rows of ``x`` (N, D) on their first two principal components.

    For unit rows this is also classical (Torgerson) MDS of their chord distances
    ||a - b|| = sqrt(2 - 2 cos). Each component's sign is fixed so that its largest-magnitude
    loading is positive (the same input always gives the same picture).

    Returns:
        (N, 2) float64 coordinates and the (2,) fractions of the variance they explain.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"pca_2d: expected (N >= 2, D) rows, got shape {x.shape}")
    centred = x - x.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    comps = np.zeros((2, x.shape[1]))
    n = min(2, vt.shape[0])
    comps[:n] = vt[:n]
    for row in comps:
        if row.any() and row[np.abs(row).argmax()] < 0:
            row *= -1
    variance = s**2
    explained = np.zeros(2)
    if variance.sum() > 0:
        explained[:n] = variance[:n] / variance.sum()
    return centred @ comps.T, explained


def read_label_map(
    path: str | os.PathLike, size: tuple[int, int], num_classes: int, ignore_label: int = 255
) -> np.ndarray:
    """A ground-truth label map, checked: a regular single-channel image of ``size`` (H, W) with
    values in 0..C-1 or ``ignore_label``.

    Returns:
        int64 (H, W).

    Raises:
        LabelMapError: naming the file and what was expected.
    """
    path = os.fspath(path)
    problem = regular_file_problem(path)
    if problem is not None:
        raise LabelMapError(f"{printable_path(path)}: label map is {problem}")
    try:
        with open(path, "rb") as f, Image.open(f) as im:
            mode = im.mode
            labels = np.array(im, dtype=np.int64) if mode in SINGLE_CHANNEL_MODES else None
    except Exception as e:  # PIL raises many types on broken files
        raise LabelMapError(f"{printable_path(path)}: cannot read the label map ({e})") from e
    if labels is None:
        raise LabelMapError(
            f"{printable_path(path)}: label map has PIL mode {mode}; expected a single-channel "
            "image of class indices (mode L, P or I)"
        )
    if labels.shape != tuple(size):
        raise LabelMapError(
            f"{printable_path(path)}: label map is {labels.shape[0]}x{labels.shape[1]} (h x w), "
            f"expected its image's {size[0]}x{size[1]}"
        )
    bad = (labels < 0) | ((labels >= num_classes) & (labels != ignore_label))
    if bad.any():
        values = np.unique(labels[bad])[:5].tolist()
        raise LabelMapError(
            f"{printable_path(path)}: label values {values} in {int(bad.sum())} pixels; expected "
            f"0..{num_classes - 1} or {ignore_label}"
        )
    return labels
