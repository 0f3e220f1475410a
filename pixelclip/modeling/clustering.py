"""Online clustering of class-agnostic masks into learnable classes (docs/METHOD.md §4).

Every function here is a pure tensor function without parameters and without gradients: the
meta-architecture feeds it the momentum teacher's dense features, the masks of the local batch and
the learnable prompts' text embeddings, and receives the per-image, per-cluster binary targets of
the loss (METHOD §5) plus the pixels the loss may look at.

Masks of a batch travel as one flat tensor ``masks`` (M, S, S) with ``image_index`` (M,) naming the
image of each mask, so that every step is one batched op (no Python loop over masks or images) and
no data-dependent shape is needed (no host synchronisation): masks that are too small are not
removed from the tensor but emptied and marked invalid, which gives the same numbers as dropping
them (see :func:`sinkhorn`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "assign_clusters",
    "build_targets",
    "cluster_masks",
    "covered_pixels",
    "own_mask_targets",
    "pool_mask_embeddings",
    "resize_masks_nearest",
    "sinkhorn",
]


def resize_masks_nearest(masks: Tensor, size: int) -> Tensor:
    """Resize masks to ``size`` x ``size`` with PyTorch's plain ``nearest`` rule (METHOD §4.2).

    Output pixel ``i`` takes input pixel ``min(floor(i * scale), in - 1)`` with ``scale = in / out``
    computed in float32, exactly as ``F.interpolate(mode="nearest")`` does on CPU and CUDA; for
    ``size = 256`` the scale is a dyadic fraction, so this equals the integer rule
    ``floor(i * in / out)``. Implemented as an index gather, so boolean masks are resized without a
    float copy of the full-resolution stack.

    Args:
        masks: (M, H, W) bool masks (M may be 0).
        size: output side S > 0.

    Returns:
        (M, S, S) bool, on the device of ``masks``.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must have shape (M, H, W); got {tuple(masks.shape)}")
    if size <= 0:
        raise ValueError(f"size (MODEL.PIXELCLIP.MASK_RESOLUTION) must be > 0; got {size}")
    masks = masks if masks.dtype == torch.bool else masks != 0
    height, width = masks.shape[-2:]
    if (height, width) == (size, size):
        return masks
    rows = _nearest_source_index(height, size, masks.device)
    cols = _nearest_source_index(width, size, masks.device)
    return masks[:, rows[:, None], cols[None, :]]


def _nearest_source_index(in_size: int, out_size: int, device: torch.device) -> Tensor:
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    index = (torch.arange(out_size, dtype=torch.float32) * scale).floor().long()
    return index.clamp_max(in_size - 1).to(device)


def _linear_interp_matrix(in_size: int, out_size: int, device: torch.device) -> Tensor:
    """(out, in) float32 weights of 1-D linear interpolation, align_corners=False.

    PyTorch's bilinear upsampling is separable with exactly these per-axis weights, so
    ``up(F) = A_h @ F @ A_w.T`` for every channel.
    """
    eye = torch.eye(in_size, dtype=torch.float32, device=device)[:, None, :]
    weights = F.interpolate(eye, size=out_size, mode="linear", align_corners=False)
    return weights[:, 0, :].T


def pool_mask_embeddings(features: Tensor, masks: Tensor, image_index: Tensor) -> Tensor:
    """Area-weighted mean feature inside each mask, L2-normalised (METHOD §4.3).

    ``features`` may be given at the mask resolution (S x S, the reference's order of operations)
    or at the feature grid (h x w): in the second case the result is that of bilinearly upsampling
    them (align_corners=False) to S x S first, computed without materialising the upsampled
    (B, D, S, S) tensor. Upsampling is linear, so the pooled sum equals the sum over the feature
    grid weighted by the mask pulled back through the interpolation matrices; the two orders
    agree up to float rounding (~1e-6 relative). Computed in float32 with autocast disabled.

    Cost: one (M, h*w) x (h*w, B*D) matmul, i.e. every mask is pooled against every image of the
    local batch and the right one is gathered; cheap at the feature grid (h*w = 400), wasteful for
    features given at S x S with large B.

    Args:
        features: (B, D, h, w) unnormalised dense features, any float dtype.
        masks: (M, S, S) bool.
        image_index: (M,) int64, the image of each mask, in [0, B).

    Returns:
        (M, D) float32, unit norm; a mask of area 0 gives the zero vector (no NaN).
    """
    if features.dim() != 4:
        raise ValueError(f"features must have shape (B, D, h, w); got {tuple(features.shape)}")
    if masks.dim() != 3 or masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"masks must have shape (M, S, S); got {tuple(masks.shape)}")
    if image_index.shape != masks.shape[:1]:
        raise ValueError(
            f"image_index must have shape ({masks.shape[0]},); got {tuple(image_index.shape)}"
        )
    num_images, dim, height, width = features.shape
    size = masks.shape[-1]
    device = features.device
    with torch.autocast(device_type=device.type, enabled=False):
        weights = masks.to(device=device, dtype=torch.float32)
        area = weights.sum(dim=(1, 2))
        if width != size:
            weights = weights @ _linear_interp_matrix(width, size, device)  # (M, S, w)
        if height != size:
            weights = _linear_interp_matrix(height, size, device).T @ weights  # (M, h, w)
        grid = features.float().permute(2, 3, 0, 1).reshape(height * width, num_images * dim)
        num_masks = masks.shape[0]
        sums = (weights.reshape(num_masks, height * width) @ grid).view(num_masks, num_images, dim)
        rows = torch.arange(num_masks, device=device)
        sums = sums[rows, image_index.to(device)]
        return F.normalize(sums / area.clamp_min(1.0)[:, None], dim=-1)


def _distributed(group) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _nonzero_or_one(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, torch.ones_like(x))


@torch.no_grad()
def sinkhorn(logits: Tensor, iters: int = 3, group=None, valid: Tensor | None = None) -> Tensor:
    """Balanced soft assignment of masks to clusters with Sinkhorn-Knopp (METHOD §4.4).

    The equipartition step of SwAV (Caron et al., "Unsupervised Learning of Visual Features by
    Contrasting Cluster Assignments", NeurIPS 2020, https://arxiv.org/abs/2006.09882), over the
    masks of all ranks together: ``Q = softmax(logits, clusters).T`` (k x m); ``Q /= global sum``;
    ``iters`` times {divide each cluster row by its global row sum; divide each mask column by its
    local column sum}. Returned transposed, so each valid mask's row sums to 1. The reference's
    constant factors (``/K``, ``/B``, ``*B``) cancel in the last column normalisation and are
    omitted. Runs in float32 whatever the input dtype.

    Collectives: 1 + ``iters`` all-reduces (SUM) on ``group`` when torch.distributed is
    initialised with world size > 1; every rank must call this with the same ``iters`` and k. A
    rank with M = 0 contributes zeros and returns a (0, k) tensor.

    Zero divisors: a cluster row can sum to exactly 0 when its softmax entries underflow for every
    mask (with temperature 100, cosines in [-1, 1] give logit gaps up to 200 and ``exp(-200)`` is 0
    in float32), and the global sum is 0 when no rank has a valid mask. Such divisors are replaced
    by 1: a zero row stays zero, i.e. that cluster receives no mass, which is the limit of the
    exact iteration, instead of the NaN that would poison every mask of every rank.

    Args:
        logits: (M, k) mask-to-cluster logits (similarity x temperature), any float dtype.
        iters: number of Sinkhorn iterations (MODEL.PIXELCLIP.SINKHORN_ITERS), >= 1.
        group: process group of the all-reduces (None = the default group).
        valid: optional (M,) bool; invalid masks are left out exactly as if they had been removed
            (their column is zeroed before the first sum) and get an all-zero row.

    Returns:
        (M, k) float32 assignment probabilities, no grad.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (M, k); got {tuple(logits.shape)}")
    if iters < 1:
        raise ValueError(f"iters (MODEL.PIXELCLIP.SINKHORN_ITERS) must be >= 1; got {iters}")
    reduce = _distributed(group)
    q = logits.float().softmax(dim=1).T.contiguous()  # (k, M)
    if valid is not None:
        q = q * valid.to(device=q.device, dtype=q.dtype)[None, :]

    total = q.sum()
    if reduce:
        dist.all_reduce(total, group=group)
    q = q / _nonzero_or_one(total)
    for _ in range(iters):
        row_sums = q.sum(dim=1, keepdim=True)
        if reduce:
            dist.all_reduce(row_sums, group=group)
        q = q / _nonzero_or_one(row_sums)
        q = q / _nonzero_or_one(q.sum(dim=0, keepdim=True))
    return q.T


def assign_clusters(q: Tensor) -> Tensor:
    """Hard assignment: argmax over clusters of the Sinkhorn output (not of the logits).

    Args:
        q: (M, k) output of :func:`sinkhorn`.

    Returns:
        (M,) int64 cluster index per mask.
    """
    return q.argmax(dim=1)


def _scatter_union(rows: Tensor, masks: Tensor, num_rows: int) -> Tensor:
    """(num_rows, S, S) bool: row r is the union of the masks whose ``rows`` entry is r.

    Rows outside [0, num_rows) are ignored. Counts are accumulated in float32 (exact for any
    realistic number of masks, and a positive sum never rounds back to 0) with ``index_put_``,
    which has a deterministic CUDA kernel.
    """
    size = masks.shape[-2:]
    rows = torch.where((rows >= 0) & (rows < num_rows), rows, torch.full_like(rows, num_rows))
    counts = masks.new_zeros((num_rows + 1, size[0] * size[1]), dtype=torch.float32)
    counts.index_put_((rows,), masks.flatten(1).float(), accumulate=True)
    return (counts[:num_rows] > 0).view(num_rows, *size)


def build_targets(
    assignments: Tensor,
    masks: Tensor,
    image_index: Tensor,
    num_images: int,
    num_clusters: int,
) -> Tensor:
    """Per image and cluster, the union of that image's masks assigned to it (METHOD §4.5).

    Args:
        assignments: (M,) int64 cluster of each mask; negative values mean "unassigned" and are
            ignored (used for masks that were dropped).
        masks: (M, S, S) bool.
        image_index: (M,) int64 image of each mask, in [0, num_images).
        num_images: B.
        num_clusters: k.

    Returns:
        (B, k, S, S) float32 with values 0/1.
    """
    rows = image_index * num_clusters + assignments
    rows = torch.where(assignments >= 0, rows, torch.full_like(rows, -1))
    union = _scatter_union(rows, masks, num_images * num_clusters)
    return union.view(num_images, num_clusters, *masks.shape[-2:]).float()


def covered_pixels(masks: Tensor, image_index: Tensor, num_images: int) -> Tensor:
    """Pixels covered by at least one mask of their image.

    Args:
        masks: (M, S, S) bool.
        image_index: (M,) int64 image of each mask.
        num_images: B.

    Returns:
        (B, S, S) bool.
    """
    return _scatter_union(image_index, masks, num_images)


@torch.no_grad()
def cluster_masks(
    teacher_features: Tensor,
    masks: Sequence[Tensor],
    prompt_embeddings: Tensor,
    *,
    mask_resolution: int = 256,
    temperature: float = 100.0,
    sinkhorn_iters: int = 3,
    group=None,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """METHOD §4 steps 1-5: masks of the local batch -> clustered binary targets.

    1. Teacher features are (implicitly) upsampled bilinearly to S x S, see
       :func:`pool_mask_embeddings`. 2. Masks are resized with :func:`resize_masks_nearest`
       (no-op when already S x S); masks with <= 1 pixel left are dropped (emptied and excluded
       from Sinkhorn, equivalent to removing them, without a host sync). 3. Normalised mask
       embeddings x normalised prompt embeddings x ``temperature`` = logits. 4. :func:`sinkhorn`
       over all ranks and argmax. 5. Union targets per image and cluster.

    Args:
        teacher_features: (B, D, h, w) unnormalised dense features of the teacher (weak view).
        masks: B bool tensors (N_b, H, W), N_b may be 0; moved to the features' device.
        prompt_embeddings: (k, D) text embeddings f_C of the learnable classes.
        mask_resolution: S (MODEL.PIXELCLIP.MASK_RESOLUTION).
        temperature: EPS multiplier of the cosines (MODEL.PIXELCLIP.TEMPERATURE).
        sinkhorn_iters: MODEL.PIXELCLIP.SINKHORN_ITERS.
        group: process group of Sinkhorn's all-reduces (None = default group).

    Returns:
        targets: (B, k, S, S) float32 0/1.
        covered: (B, S, S) bool, pixels covered by at least one kept mask of the image.
        stats: local (not all-reduced) 0-dim int64 tensors ``num_masks`` (kept),
            ``num_masks_dropped``, ``num_clusters_used``, and ``cluster_counts`` (k,) int64.
    """
    if teacher_features.dim() != 4:
        raise ValueError(
            f"teacher_features must have shape (B, D, h, w); got {tuple(teacher_features.shape)}"
        )
    num_images, dim = teacher_features.shape[:2]
    if len(masks) != num_images:
        raise ValueError(f"expected one mask tensor per image ({num_images}); got {len(masks)}")
    if prompt_embeddings.dim() != 2 or prompt_embeddings.shape[1] != dim:
        raise ValueError(
            f"prompt_embeddings must have shape (k, {dim}); got {tuple(prompt_embeddings.shape)}"
        )
    for b, m in enumerate(masks):
        if m.dim() != 3:
            raise ValueError(f"masks[{b}] must have shape (N, H, W); got {tuple(m.shape)}")
    device = teacher_features.device
    num_clusters = prompt_embeddings.shape[0]

    # One resize per image tensor: the list's images may differ in size; resizing before the
    # transfer moves only S x S masks to the device.
    resized = [resize_masks_nearest(m, mask_resolution).to(device) for m in masks]
    all_masks = torch.cat(resized)
    counts = torch.tensor([m.shape[0] for m in masks], device=device)
    image_index = torch.repeat_interleave(
        torch.arange(num_images, device=device), counts, output_size=all_masks.shape[0]
    )
    valid = all_masks.flatten(1).sum(dim=1) > 1
    all_masks = all_masks & valid[:, None, None]

    embeddings = pool_mask_embeddings(teacher_features, all_masks, image_index)
    # float32 even inside a bf16 autocast region: near-ties decide the argmax below.
    with torch.autocast(device_type=device.type, enabled=False):
        prompts = F.normalize(prompt_embeddings.detach().float(), dim=-1)
        logits = temperature * (embeddings @ prompts.T)
    q = sinkhorn(logits, sinkhorn_iters, group=group, valid=valid)
    assignments = torch.where(
        valid, assign_clusters(q), torch.full_like(valid, -1, dtype=torch.long)
    )

    targets = build_targets(assignments, all_masks, image_index, num_images, num_clusters)
    covered = covered_pixels(all_masks, image_index, num_images)
    cluster_counts = torch.zeros(num_clusters, dtype=torch.long, device=device)
    cluster_counts.index_put_((assignments.clamp_min(0),), valid.long(), accumulate=True)
    stats = {
        "num_masks": valid.sum(),
        "num_masks_dropped": (~valid).sum(),
        "num_clusters_used": (cluster_counts > 0).sum(),
        "cluster_counts": cluster_counts,
    }
    return targets, covered, stats


@torch.no_grad()
def own_mask_targets(
    teacher_features: Tensor, masks: Sequence[Tensor], *, mask_resolution: int = 256
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The no-clustering ablation (MODEL.PIXELCLIP.SEMANTIC_CLUSTERING = False): every mask is its
    own class, whose embedding is the teacher's pooled feature of that mask (steps 1-3 of METHOD
    §4 without Sinkhorn), and its own target. Images are padded to the largest number of kept
    masks; padded channels are empty and marked absent.

    Args:
        teacher_features: (B, D, h, w) unnormalised dense features of the teacher (weak view).
        masks: B bool tensors (N_b, H, W), N_b may be 0.
        mask_resolution: S.

    Returns:
        embeddings: (B, N, D) float32 unit rows (zero rows for padding), N = max kept masks (>= 1).
        targets: (B, N, S, S) float32 0/1, one mask per channel.
        covered: (B, S, S) bool, pixels covered by at least one kept mask of the image.
        present: (B, N) bool, the channels holding a real mask.
    """
    num_images = teacher_features.shape[0]
    if len(masks) != num_images:
        raise ValueError(f"expected one mask tensor per image ({num_images}); got {len(masks)}")
    device = teacher_features.device
    kept = []
    for m in masks:  # a loop over the few images of the batch; this is an ablation only
        m = resize_masks_nearest(m, mask_resolution).to(device)
        kept.append(m[m.flatten(1).sum(dim=1) > 1])
    width = max([1] + [m.shape[0] for m in kept])
    size = (mask_resolution, mask_resolution)
    padded = torch.zeros((num_images, width, *size), dtype=torch.bool, device=device)
    present = torch.zeros((num_images, width), dtype=torch.bool, device=device)
    for b, m in enumerate(kept):
        padded[b, : m.shape[0]] = m
        present[b, : m.shape[0]] = True
    image_index = torch.arange(num_images, device=device).repeat_interleave(width)
    embeddings = pool_mask_embeddings(teacher_features, padded.flatten(0, 1), image_index)
    embeddings = embeddings.view(num_images, width, -1)
    return embeddings, padded.float(), padded.any(dim=1), present
