"""Online clustering (METHOD §4) against naive, independently written computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_to_float64

from pixelclip.modeling.clustering import (
    assign_clusters,
    build_targets,
    cluster_masks,
    covered_pixels,
    own_mask_targets,
    pool_mask_embeddings,
    resize_masks_nearest,
    sinkhorn,
)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def naive_sinkhorn(logits: torch.Tensor, iters: int, dtype=np.float64) -> np.ndarray:
    """METHOD §4.4 in numpy (float64 unless told), one row / column at a time."""
    x = logits.double().numpy().astype(dtype)
    p = np.exp(x - x.max(axis=1, keepdims=True))
    q = (p / p.sum(axis=1, keepdims=True)).T.copy()  # (k, m)
    q /= q.sum()
    for _ in range(iters):
        for j in range(q.shape[0]):
            q[j] /= q[j].sum()
        for n in range(q.shape[1]):
            q[:, n] /= q[:, n].sum()
    return q.T


# ------------------------------------------------------------------------------------ resize


@pytest.mark.parametrize("in_size", [40, 37, 10, 16, 683, 1000])
def test_resize_nearest_matches_floor_rule(in_size):
    out = 16 if in_size < 100 else 256
    masks = torch.rand(3, in_size, in_size + 3, generator=_generator(in_size)) > 0.5
    got = resize_masks_nearest(masks, out)
    rows = [i * in_size // out for i in range(out)]
    cols = [j * (in_size + 3) // out for j in range(out)]
    expected = masks[:, rows][:, :, cols]
    assert got.dtype == torch.bool and got.shape == (3, out, out)
    assert torch.equal(got, expected)
    # ... which is also PyTorch's own nearest interpolation.
    torch_nearest = F.interpolate(masks[None].float(), size=(out, out), mode="nearest")[0] > 0
    assert torch.equal(got, torch_nearest)


def test_resize_empty_and_bad_input():
    assert resize_masks_nearest(torch.zeros(0, 30, 20, dtype=torch.bool), 8).shape == (0, 8, 8)
    with pytest.raises(ValueError, match=r"\(M, H, W\)"):
        resize_masks_nearest(torch.zeros(30, 20, dtype=torch.bool), 8)
    with pytest.raises(ValueError, match="MASK_RESOLUTION"):
        resize_masks_nearest(torch.zeros(1, 30, 20, dtype=torch.bool), 0)


# ----------------------------------------------------------------------------------- pooling


def _naive_pool(features_full, masks, image_index, dtype=torch.float64):
    """Masked means, normalised, in ``dtype`` (float64 unless told)."""
    out = []
    for mask, b in zip(masks, image_index.tolist()):
        feats = features_full[b].to(dtype)  # (D, S, S)
        area = mask.sum().item()
        if area == 0:
            out.append(torch.zeros(feats.shape[0], dtype=dtype))
            continue
        mean = feats[:, mask].sum(dim=1) / area
        out.append(mean / mean.norm())
    return torch.stack(out)


def test_pool_at_mask_resolution_matches_loop():
    g = _generator(1)
    features = torch.randn(3, 6, 12, 12, generator=g)
    masks = torch.rand(7, 12, 12, generator=g) > 0.6
    masks[4] = False  # area 0: zero vector, no NaN
    image_index = torch.tensor([0, 0, 2, 1, 2, 2, 0])
    got = pool_mask_embeddings(features, masks, image_index)
    assert got.dtype == torch.float32 and got.shape == (7, 6)
    assert torch.isfinite(got).all()
    expected = _naive_pool(features, masks, image_index, torch.float32)
    assert_close_to_float64(got, _naive_pool(features, masks, image_index), expected)


def test_pool_from_feature_grid_equals_upsample_then_pool():
    g = _generator(2)
    features = torch.randn(2, 5, 4, 6, generator=g).bfloat16()  # any float dtype; pooled in fp32
    masks = torch.rand(6, 24, 24, generator=g) > 0.5
    image_index = torch.tensor([1, 0, 1, 1, 0, 0])

    def upsample(x):
        return F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False)

    got = pool_mask_embeddings(features, masks, image_index)
    expected = _naive_pool(upsample(features.float()), masks, image_index, torch.float32)
    expected64 = _naive_pool(upsample(features.double()), masks, image_index)
    assert_close_to_float64(got, expected64, expected)


def test_pool_bad_input():
    with pytest.raises(ValueError, match="image_index"):
        pool_mask_embeddings(
            torch.zeros(1, 2, 4, 4), torch.zeros(3, 4, 4, dtype=torch.bool), torch.zeros(2)
        )


# ---------------------------------------------------------------------------------- sinkhorn


def test_sinkhorn_matches_naive_and_marginals():
    logits = 100 * (2 * torch.rand(23, 5, generator=_generator(3)) - 1)
    q = sinkhorn(logits, iters=3)
    assert q.shape == (23, 5) and q.dtype == torch.float32 and not q.requires_grad
    expected64 = torch.from_numpy(naive_sinkhorn(logits, 3))
    expected = torch.from_numpy(naive_sinkhorn(logits, 3, np.float32))
    assert_close_to_float64(q, expected64, expected)
    # Rows of 5 sum to 1 up to the rounding of normalising them and of summing them again.
    assert_close_to_float64(q.sum(dim=1), torch.ones(23, dtype=torch.float64), terms=2 * 5)


def test_sinkhorn_balances_clusters():
    # 40 masks, 4 clusters: after enough iterations every cluster holds m / k = 10 masks' mass.
    logits = 5 * torch.randn(40, 4, generator=_generator(4))
    logits[:, 0] += 4.0  # a strong common preference that plain softmax would follow
    q = sinkhorn(logits, iters=50)
    torch.testing.assert_close(q.sum(dim=0), torch.full((4,), 10.0), atol=1e-2, rtol=0)
    assert_close_to_float64(q.sum(dim=1), torch.ones(40, dtype=torch.float64), terms=2 * 4)
    # Three iterations already move most of the way there.
    plain = logits.softmax(dim=1).sum(dim=0)
    three = sinkhorn(logits, iters=3).sum(dim=0)
    assert (three - 10).abs().max() < 0.5 * (plain - 10).abs().max()


def test_sinkhorn_spreads_what_argmax_collapses():
    # Every mask prefers cluster 0 by a margin, but masks differ in their second choice: argmax
    # of the logits puts everything in cluster 0, the balanced assignment one group per cluster.
    k, per_group = 4, 3
    logits = torch.zeros(k * per_group, k)
    logits[:, 0] = 10.0
    for group in range(1, k):
        logits[group * per_group : (group + 1) * per_group, group] = 8.0
    assert (logits.argmax(dim=1) == 0).all()
    assignment = assign_clusters(sinkhorn(logits, iters=3))
    expected = torch.arange(k).repeat_interleave(per_group)
    assert torch.equal(assignment, expected)


def test_sinkhorn_fp32_and_valid_and_underflow():
    logits = 100 * (2 * torch.rand(9, 4, generator=_generator(5)) - 1)
    logits[:, 3] = -100.0  # exp(-200) underflows: cluster row sum exactly 0 in float32
    logits[:, 2] = 100.0
    q = sinkhorn(logits.bfloat16(), iters=3)
    assert q.dtype == torch.float32 and torch.isfinite(q).all()
    assert torch.all(q[:, 3] == 0)
    assert_close_to_float64(q.sum(dim=1), torch.ones(9, dtype=torch.float64), terms=2 * 4)

    valid = torch.tensor([True, False, True, True, False, True, True, True, False])
    logits = 10 * torch.randn(9, 4, generator=_generator(6))
    q = sinkhorn(logits, iters=3, valid=valid)
    expected64 = torch.from_numpy(naive_sinkhorn(logits[valid], 3))
    assert_close_to_float64(q[valid], expected64, sinkhorn(logits[valid], iters=3))
    assert torch.all(q[~valid] == 0)


def test_sinkhorn_empty_and_bad_input():
    q = sinkhorn(torch.zeros(0, 6), iters=3)
    assert q.shape == (0, 6)
    assert assign_clusters(q).shape == (0,)
    with pytest.raises(ValueError, match="SINKHORN_ITERS"):
        sinkhorn(torch.zeros(3, 6), iters=0)
    with pytest.raises(ValueError, match=r"\(M, k\)"):
        sinkhorn(torch.zeros(6), iters=3)


# ---------------------------------------------------------------------------------- targets


def test_build_targets_and_covered_match_loop():
    g = _generator(7)
    num_images, k, size = 3, 5, 10
    masks = torch.rand(11, size, size, generator=g) > 0.7
    image_index = torch.tensor([0, 2, 2, 0, 0, 2, 2, 0, 2, 0, 2])  # image 1 has no masks
    assignments = torch.tensor([1, 4, 4, 1, 0, -1, 3, 2, 0, 1, 4])  # -1: dropped mask
    targets = build_targets(assignments, masks, image_index, num_images, k)
    covered = covered_pixels(masks, image_index, num_images)
    expected = torch.zeros(num_images, k, size, size)
    expected_cov = torch.zeros(num_images, size, size, dtype=torch.bool)
    for n in range(masks.shape[0]):
        b, j = image_index[n].item(), assignments[n].item()
        expected_cov[b] |= masks[n]
        if j >= 0:
            expected[b, j] = torch.maximum(expected[b, j], masks[n].float())
    assert targets.dtype == torch.float32 and targets.shape == (num_images, k, size, size)
    assert torch.equal(targets, expected)
    assert covered.dtype == torch.bool and torch.equal(covered, expected_cov)


# --------------------------------------------------------------------------------- end to end


def _naive_cluster_masks(features, masks, prompts, size, temperature, iters):
    """METHOD §4 steps 1-5 written out with explicit upsampling, dropping and loops."""
    num_images, k = features.shape[0], prompts.shape[0]
    upsampled = F.interpolate(features, size=(size, size), mode="bilinear", align_corners=False)
    kept, index, embeddings = [], [], []
    for b, image_masks in enumerate(masks):
        for mask in image_masks:
            small = F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")
            small = small[0, 0] > 0
            if small.sum() <= 1:
                continue
            feat = (upsampled[b] * small).sum(dim=(1, 2)) / small.sum()
            kept.append(small)
            index.append(b)
            embeddings.append(feat / feat.norm())
    targets = torch.zeros(num_images, k, size, size)
    covered = torch.zeros(num_images, size, size, dtype=torch.bool)
    if not kept:
        return targets, covered, torch.zeros(0, dtype=torch.long)
    prompts = prompts / prompts.norm(dim=1, keepdim=True)
    logits = temperature * torch.stack(embeddings) @ prompts.T
    assignment = torch.from_numpy(naive_sinkhorn(logits, iters).argmax(axis=1))
    for mask, b, j in zip(kept, index, assignment.tolist()):
        targets[b, j][mask] = 1.0
        covered[b] |= mask
    return targets, covered, assignment


def _random_masks(g, count, height, width):
    return torch.rand(count, height, width, generator=g) > 0.6


def test_cluster_masks_end_to_end_matches_naive():
    g = _generator(8)
    features = torch.randn(3, 8, 4, 4, generator=g)
    prompts = torch.randn(6, 8, generator=g)
    image0 = _random_masks(g, 5, 40, 40)
    image0[3] = False
    image0[3, 0, 0] = True  # one pixel, sampled by nearest -> 1 pixel -> dropped
    image0[4] = False
    image0[4, 1, 1] = True  # one pixel, not sampled -> 0 pixels -> dropped
    image2 = _random_masks(g, 7, 16, 16)  # already at mask resolution
    masks = [image0, torch.zeros(0, 40, 40, dtype=torch.bool), image2]

    targets, covered, stats = cluster_masks(
        features, masks, prompts, mask_resolution=16, temperature=100.0, sinkhorn_iters=3
    )
    exp_targets, exp_covered, exp_assign = _naive_cluster_masks(
        features, masks, prompts, 16, 100.0, 3
    )
    assert targets.shape == (3, 6, 16, 16) and covered.shape == (3, 16, 16)
    assert torch.equal(targets, exp_targets)
    assert torch.equal(covered, exp_covered)
    assert torch.equal(covered, targets.amax(dim=1) > 0)
    assert stats["num_masks"].item() == 10 and stats["num_masks_dropped"].item() == 2
    assert torch.equal(stats["cluster_counts"], torch.bincount(exp_assign, minlength=6))
    assert stats["num_clusters_used"].item() == len(set(exp_assign.tolist()))


def test_cluster_masks_ignores_autocast():
    g = _generator(10)
    features = torch.randn(2, 8, 4, 4, generator=g)
    masks = [_random_masks(g, 6, 16, 16), _random_masks(g, 5, 16, 16)]
    prompts = torch.randn(6, 8, generator=g)
    expected = cluster_masks(features, masks, prompts, mask_resolution=16)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = cluster_masks(features, masks, prompts, mask_resolution=16)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_cluster_masks_all_images_empty():
    features = torch.randn(2, 8, 4, 4, generator=_generator(9))
    masks = [torch.zeros(0, 32, 32, dtype=torch.bool), torch.zeros(2, 32, 32, dtype=torch.bool)]
    targets, covered, stats = cluster_masks(features, masks, torch.randn(3, 8), mask_resolution=8)
    assert targets.shape == (2, 3, 8, 8) and not targets.any()
    assert covered.shape == (2, 8, 8) and not covered.any()
    assert stats["num_masks"].item() == 0 and stats["num_clusters_used"].item() == 0


def test_cluster_masks_bad_input():
    features = torch.zeros(2, 8, 4, 4)
    one = torch.ones(1, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="one mask tensor per image"):
        cluster_masks(features, [one], torch.zeros(3, 8))
    with pytest.raises(ValueError, match=r"prompt_embeddings must have shape \(k, 8\)"):
        cluster_masks(features, [one, one], torch.zeros(3, 7))
    with pytest.raises(ValueError, match=r"masks\[1\]"):
        cluster_masks(features, [one, one[0]], torch.zeros(3, 8))


def test_own_mask_targets_pad_images_and_pool_each_mask():
    torch.manual_seed(0)
    features = torch.randn(2, 6, 4, 4)
    first = torch.zeros(3, 8, 8, dtype=torch.bool)
    first[0, :4], first[1, 4:, :4], first[2, 7, 7] = True, True, True  # the third: 1 px, dropped
    second = torch.zeros(1, 8, 8, dtype=torch.bool)
    second[0, 2:6, 2:6] = True
    emb, targets, covered, present = own_mask_targets(features, [first, second], mask_resolution=8)
    assert emb.shape == (2, 2, 6) and targets.shape == (2, 2, 8, 8)
    assert present.tolist() == [[True, True], [True, False]]
    torch.testing.assert_close(targets[0], first[:2].float())
    torch.testing.assert_close(targets[1, 0], second[0].float())
    assert targets[1, 1].sum() == 0 and emb[1, 1].abs().sum() == 0
    assert torch.equal(covered[0], first[0] | first[1]) and torch.equal(covered[1], second[0])
    expected = pool_mask_embeddings(features, first[1:2], torch.tensor([0]))[0]
    upsampled = F.interpolate(features.double(), size=(8, 8), mode="bilinear", align_corners=False)
    expected64 = _naive_pool(upsampled, first[1:2], torch.tensor([0]))[0]
    assert_close_to_float64(emb[0, 1], expected64, expected)
    # no masks at all: one empty, absent channel per image
    emb, targets, covered, present = own_mask_targets(
        features, [first[:0], second[:0]], mask_resolution=8
    )
    assert targets.shape == (2, 1, 8, 8) and not present.any() and not covered.any()
