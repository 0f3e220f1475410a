"""PAMR: pixel-adaptive mask refinement of class score maps by local image affinities.

PAMR was introduced by Araslanov & Roth, "Single-Stage Semantic Segmentation from Image Labels",
CVPR 2020; the training-free CLIP segmentation papers (NACLIP and its successors) report results
with and without it. This is our own implementation of its definition:

For every pixel i, its neighbours N(i) are the 8 pixels at offsets (dy * d, dx * d),
dy, dx in {-1, 0, 1}, not both 0, for every dilation d (image borders are replicated). With
I_c the image's channel c and s_c(i) the standard deviation (unbiased) of I_c over the 9
positions of every dilation's 3 x 3 neighbourhood of i (the centre counted once per dilation),

    k(i, j) = - mean_c |I_c(i) - I_c(j)| / (1e-8 + 0.1 * s_c(i)),     j in N(i)
    a(i, .) = softmax_j k(i, j)

and each of ``steps`` iterations replaces every score map m by m'(i) = sum_j a(i, j) m(j). The
affinities do not depend on a per-channel affine change of the image, so a normalised or a raw
image gives the same result (up to the 1e-8).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pamr"]

_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _shifted(x: Tensor, d: int, dy: int, dx: int) -> Tensor:
    """``x`` (N, C, H, W) read at (y + dy * d, x + dx * d), borders replicated."""
    height, width = x.shape[-2:]
    padded = F.pad(x, [d, d, d, d], mode="replicate")
    top, left = d + dy * d, d + dx * d
    return padded[..., top : top + height, left : left + width]


def _affinities(image: Tensor, dilations: Sequence[int]) -> list[tuple[int, int, int, Tensor]]:
    """(d, dy, dx, a(i, j)) for every neighbour offset; each ``a`` is (B, H, W), summing to 1."""
    centre_and_neighbours = torch.stack(
        [_shifted(image, d, dy, dx) for d in dilations for dy, dx in _OFFSETS], dim=2
    )
    std = centre_and_neighbours.std(dim=2)  # (B, K, H, W), unbiased
    scale = 1e-8 + 0.1 * std
    offsets = [(d, dy, dx) for d in dilations for dy, dx in _OFFSETS if (dy, dx) != (0, 0)]
    logits = torch.stack(
        [
            -((image - _shifted(image, d, dy, dx)).abs() / scale).mean(dim=1)
            for d, dy, dx in offsets
        ],
        dim=1,
    )  # (B, P, H, W)
    weights = logits.softmax(dim=1)
    return [(d, dy, dx, weights[:, p]) for p, (d, dy, dx) in enumerate(offsets)]


@torch.no_grad()
def pamr(
    image: Tensor, scores: Tensor, steps: int = 10, dilations: Sequence[int] = (8, 16)
) -> Tensor:
    """Refine class score maps with PAMR (see the module docstring).

    Args:
        image: (B, K, H, W) float image (any per-channel normalisation); computed in float32,
            or float64 for a float64 image.
        scores: (B, C, H', W') score maps; resized to (H, W) first (bilinear, corners aligned)
            if their size differs.
        steps: number of propagation steps (0 returns the resized scores).
        dilations: neighbourhood dilations in pixels.

    Returns:
        (B, C, H, W) refined scores, in the dtype of ``scores``.
    """
    if image.dim() != 4 or scores.dim() != 4 or image.shape[0] != scores.shape[0]:
        raise ValueError(
            f"pamr: expected image (B, K, H, W) and scores (B, C, H', W'), got "
            f"{tuple(image.shape)} and {tuple(scores.shape)}"
        )
    if steps < 0 or not dilations or any(int(d) < 1 for d in dilations):
        raise ValueError(f"pamr: steps >= 0 and dilations >= 1 expected, got {steps}, {dilations}")
    dtype = scores.dtype
    compute = torch.float64 if image.dtype == torch.float64 else torch.float32
    image, scores = image.to(compute), scores.to(compute)
    if scores.shape[-2:] != image.shape[-2:]:
        scores = F.interpolate(scores, size=image.shape[-2:], mode="bilinear", align_corners=True)
    if steps == 0:
        return scores.to(dtype)
    weights = _affinities(image, [int(d) for d in dilations])
    for _ in range(steps):
        # One neighbour at a time: (B, C, H, W) memory, not (B, C, P, H, W).
        refined = torch.zeros_like(scores)
        for d, dy, dx, a in weights:
            refined += a[:, None] * _shifted(scores, d, dy, dx)
        scores = refined
    return scores.to(dtype)
