"""The readout of the training-free CLIP segmentation protocol (NACLIP and the papers it follows).

It differs from the paper protocol's (docs/METHOD.md §9) in two ways:

* **Names as queries.** A class with several names ("background; sky; wall" or "person, people")
  contributes one text query per name, each its own template-averaged embedding (not one averaged
  embedding per class). Scores are ``softmax(logit_scale * cosine)`` over *all* queries, and a
  class scores the maximum over its names' probabilities.
* **Background by threshold.** On a benchmark with a background class, a pixel whose best class
  probability is below ``prob_threshold`` is assigned to the background class (index 0).

Facts from NACLIP's released evaluation (github.com/sinahmr/NACLIP, ``naclip.py`` and
``configs/cfg_*.py``): logit scale 40; threshold 0.1 on VOC-21, Context-60 and COCO-Object (the
three benchmarks with background), none elsewhere; 80 ImageNet templates per name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["class_probabilities", "names_as_queries", "predict_with_background"]


def names_as_queries(class_names: Sequence[str], separator: str = ",") -> tuple[list[str], Tensor]:
    """Split every class into its names: (queries, query -> class index (int64, (Q,))).

    Args:
        class_names: one entry per class; names of one class separated by ``separator``.
        separator: the separator inside an entry.

    Raises:
        ValueError: an empty class list or a class with no name.
    """
    queries, owner = [], []
    for index, entry in enumerate(class_names):
        names = [n.strip() for n in entry.split(separator) if n.strip()]
        if not names:
            raise ValueError(f"class {index} ({entry!r}) has no name")
        queries += names
        owner += [index] * len(names)
    if not queries:
        raise ValueError("no classes")
    return queries, torch.tensor(owner, dtype=torch.int64)


def class_probabilities(cosines: Tensor, query_class: Tensor, logit_scale: float = 40.0) -> Tensor:
    """Class probabilities from query cosines: softmax over queries, max over a class's names.

    Args:
        cosines: (Q, H, W) cosine similarity of each pixel to each query.
        query_class: (Q,) int64 class index of each query (every class 0..C-1 present).
        logit_scale: multiplier of the cosines before the softmax.

    Returns:
        (C, H, W) float32 probabilities (a class's value is its best name's probability).
    """
    if cosines.dim() != 3 or query_class.shape != cosines.shape[:1]:
        raise ValueError(
            f"expected cosines (Q, H, W) and query_class (Q,), got {tuple(cosines.shape)} and "
            f"{tuple(query_class.shape)}"
        )
    probs = (cosines.float() * logit_scale).softmax(dim=0)
    num_classes = int(query_class.max()) + 1
    out = probs.new_full((num_classes, *probs.shape[1:]), -1.0)
    index = query_class.to(probs.device).view(-1, 1, 1).expand_as(probs)
    out = out.scatter_reduce(0, index, probs, reduce="amax", include_self=True)
    if bool((out < 0).any()):
        raise ValueError("query_class must name every class from 0 to its maximum")
    return out


def predict_with_background(
    probs: Tensor, prob_threshold: float = 0.0, background: int = 0
) -> Tensor:
    """Argmax over classes; pixels whose best probability is below ``prob_threshold`` become
    ``background``. Returns (H, W) int64."""
    best, labels = probs.max(dim=0)
    if prob_threshold > 0:
        labels = torch.where(best < prob_threshold, torch.full_like(labels, background), labels)
    return labels
