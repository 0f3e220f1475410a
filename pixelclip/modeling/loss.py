"""PixelCLIP's only loss: BCE between decoded cost maps and clustered mask targets (METHOD §5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["masked_bce_loss"]


def masked_bce_loss(
    logits: Tensor, targets: Tensor, covered: Tensor, channels: Tensor | None = None
) -> Tensor:
    """Binary cross-entropy with logits over all k channels at the covered pixels.

    The mean is taken over every (image, covered pixel, cluster) triple of the local batch, i.e.
    ``sum_b sum_{p in covered_b} sum_j bce(b, j, p) / (k * sum_b |covered_b|)``, which is the
    reference's element-wise mean over the covered pixels of the whole batch (not a mean of
    per-image means). Pixels outside every mask (e.g. the cutout box) contribute neither to the
    numerator nor the denominator, and their logits receive an exactly zero gradient.

    When no pixel of the batch is covered (all masks dropped or missing) the loss is 0: the
    denominator is clamped to 1 and the numerator is a sum of zeros selected from the logits'
    graph, so the result is a finite zero with a ``grad_fn`` and all-zero gradients, and a DDP
    rank without masks still runs the backward (and the gradient all-reduce) like the others.
    Computed in float32 and without host synchronisation.

    Args:
        logits: (B, k, S, S) decoder logits, any float dtype.
        targets: (B, k, S, S) 0/1 targets (float or bool).
        covered: (B, S, S) bool, pixels covered by at least one mask of the image.
        channels: optional (B, k) bool, the channels that exist for each image (the
            no-clustering ablation pads images with fewer masks); absent channels are ignored
            like uncovered pixels. None = all k channels.

    Returns:
        0-dim float32 loss.
    """
    if logits.dim() != 4 or targets.shape != logits.shape:
        raise ValueError(
            "logits and targets must have the same shape (B, k, S, S); got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(covered.shape) != expected:
        raise ValueError(f"covered must have shape {expected}; got {tuple(covered.shape)}")
    covered = covered.to(device=logits.device, dtype=torch.bool)
    bce = F.binary_cross_entropy_with_logits(
        logits.float(), targets.to(device=logits.device, dtype=torch.float32), reduction="none"
    )
    if channels is None:
        keep = covered[:, None]
        count = covered.sum() * logits.shape[1]
    else:
        if tuple(channels.shape) != tuple(logits.shape[:2]):
            raise ValueError(
                f"channels must have shape {tuple(logits.shape[:2])}; got {tuple(channels.shape)}"
            )
        channels = channels.to(device=logits.device, dtype=torch.bool)
        keep = covered[:, None] & channels[:, :, None, None]
        count = (covered.flatten(1).sum(dim=1) * channels.sum(dim=1)).sum()
    # torch.where (not a multiplication) so that non-finite logits at ignored pixels cannot leak.
    total = torch.where(keep, bce, torch.zeros_like(bce)).sum()
    return total / count.clamp_min(1)
