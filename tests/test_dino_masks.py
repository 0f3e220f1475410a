"""k-means and the DINO mask generator (METHOD §8): constructed features, a tiny random ViT."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_to_float64

from pixelclip.masks.dino import DinoMaskGenerator, kmeans, load_dino_state_dict

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def same_partition(a, b) -> bool:
    """True when label vectors a and b are equal up to a permutation of label ids."""
    a, b = list(map(int, a)), list(map(int, b))
    pairs = set(zip(a, b))
    return len(pairs) == len(set(a)) == len(set(b))


def naive_kmeans(points: np.ndarray, k: int, iters: int = 50) -> list[int]:
    """Textbook spherical k-means with farthest-point seeding, one point at a time."""
    pts = [p / np.linalg.norm(p) for p in points]
    centers = [pts[0]]
    while len(centers) < k:
        far = max(range(len(pts)), key=lambda i: min(1 - pts[i] @ c for c in centers))
        centers.append(pts[far])
    labels = [0] * len(pts)
    for _ in range(iters):
        labels = [max(range(k), key=lambda j: p @ centers[j]) for p in pts]
        for j in range(k):
            members = [p for p, lab in zip(pts, labels) if lab == j]
            if members:
                s = np.sum(members, axis=0)
                centers[j] = s / np.linalg.norm(s)
    return labels


def separated_clusters(batch=3, k=4, per=15, dim=8, seed=0):
    """Points around k orthogonal directions per image; ground-truth labels shuffled."""
    g = torch.Generator().manual_seed(seed)
    feats, truth = [], []
    for _ in range(batch):
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
        lab = torch.randperm(k * per, generator=g) % k
        x = q[:k][lab] * (1 + torch.rand(k * per, 1, generator=g) * 3)  # norms must not matter
        feats.append(x + 0.05 * torch.randn(k * per, dim, generator=g))
        truth.append(lab)
    return torch.stack(feats), torch.stack(truth)


def test_kmeans_recovers_separated_clusters_like_naive_reference():
    feats, truth = separated_clusters()
    labels = kmeans(feats, num_clusters=4, iters=10, seed=0)
    assert labels.shape == truth.shape and labels.dtype == torch.long
    for b in range(len(feats)):
        reference = naive_kmeans(feats[b].double().numpy(), 4)
        assert same_partition(reference, truth[b])
        assert same_partition(labels[b], reference)


def test_kmeans_converges_to_a_lloyd_fixed_point():
    # Overlapping random data: check the defining property of converged spherical k-means, with
    # centroids recomputed here: every point's label is its most cosine-similar centroid.
    x = torch.randn(2, 200, 6, generator=torch.Generator().manual_seed(1))
    labels = kmeans(x, num_clusters=5, iters=100, seed=3)
    xn = F.normalize(x.double(), dim=-1)
    for b in range(2):
        cents = torch.stack([F.normalize(xn[b][labels[b] == j].sum(0), dim=0) for j in range(5)])
        assert torch.equal((xn[b] @ cents.T).argmax(1), labels[b])


def test_kmeans_deterministic_batch_invariant_and_leaves_global_rng_alone():
    x = torch.randn(4, 64, 16, generator=torch.Generator().manual_seed(2))
    state = torch.get_rng_state()
    a = kmeans(x, 6, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, kmeans(x, 6, seed=5))
    for b in range(4):
        assert torch.equal(kmeans(x[b : b + 1], 6, seed=5)[0], a[b])
    assert any(not torch.equal(a, kmeans(x, 6, seed=s)) for s in range(6, 10))


def test_kmeans_seeding_picks_distinct_points_and_handles_duplicates():
    # K = N: k-means++ must choose every point once, so every point gets its own cluster.
    x = torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(0))
    labels = kmeans(x, 7, iters=0)
    assert all(sorted(row.tolist()) == list(range(7)) for row in labels)
    # Only 2 distinct points but 3 clusters: no crash, one cluster stays empty.
    dup = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[torch.tensor([0, 1, 0, 1, 0])][None]
    labels = kmeans(dup, 3, iters=5)
    assert len(set(labels[0].tolist())) == 2 and same_partition(labels[0], [0, 1, 0, 1, 0])


def test_kmeans_ignores_autocast():
    x = torch.randn(2, 50, 8, generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = kmeans(x, 4)
    assert torch.equal(a, kmeans(x, 4))


def test_kmeans_bad_input():
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans(torch.randn(1, 3, 4), 4)
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        kmeans(torch.randn(3, 4), 2)


@pytest.fixture(scope="module")
def generator():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return DinoMaskGenerator(num_clusters=3, resolution=64, model_kwargs=TINY)


def images(n=2, h=50, w=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


def test_patch_features_are_imagenet_normalised_tokens_without_class_token(generator):
    x = images()

    def by_hand(vit, dtype):
        mean = torch.tensor([0.485, 0.456, 0.406], dtype=dtype).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], dtype=dtype).view(1, 3, 1, 1)
        resized = F.interpolate(x.to(dtype) / 255, size=(64, 64), mode="bilinear", antialias=True)
        with torch.no_grad():
            return vit.forward_features((resized - mean) / std)[:, 1:]

    expected = by_hand(generator.vit, torch.float32)
    expected64 = by_hand(copy.deepcopy(generator.vit).double(), torch.float64)
    got = generator.patch_features(x)
    assert got.shape == (2, 16, 32)
    assert_close_to_float64(got, expected64, expected)


@pytest.mark.parametrize("out_size", [40, (30, 45)])
def test_masks_are_nearest_upsampled_kmeans_clusters(generator, out_size):
    x = images()
    masks = generator(x, out_size)
    oh, ow = (out_size, out_size) if isinstance(out_size, int) else out_size
    assert masks.shape == (2, 3, oh, ow) and masks.dtype == torch.bool
    assert torch.equal(masks.sum(1), torch.ones(2, oh, ow, dtype=torch.long))  # a partition
    labels = kmeans(generator.patch_features(x), 3, 20, 0).view(2, 4, 4).numpy()
    m = masks.numpy()
    for b in range(2):
        for i in range(oh):
            for j in range(ow):
                cell = labels[b, math.floor(i * 4 / oh), math.floor(j * 4 / ow)]
                assert m[b, cell, i, j]
    assert torch.equal(masks, generator(x, out_size))  # deterministic
    assert torch.equal(generator(x[1:], out_size)[0], masks[1])  # batch-invariant


def test_generator_stays_frozen_in_eval(generator):
    generator.train()
    assert not generator.training and not generator.vit.training
    assert not any(p.requires_grad for p in generator.parameters())
    with torch.enable_grad():
        assert generator.patch_features(images(1)).grad_fn is None


def test_bad_construction_arguments():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        DinoMaskGenerator(resolution=60, model_kwargs=TINY)
    with pytest.raises(ValueError, match="exceeds"):
        DinoMaskGenerator(resolution=32, num_clusters=5, model_kwargs=TINY)


def official_layout(state):
    """The layout of DINO's full training checkpoint: teacher/student, backbone./head. names."""
    teacher = {f"module.backbone.{k}": v.clone() for k, v in state.items()}
    teacher["module.head.mlp.0.weight"] = torch.zeros(4, 32)
    return {"student": teacher, "teacher": teacher, "epoch": 100}


@pytest.mark.parametrize("layout", ["flat", "full_checkpoint", "safetensors"])
def test_weights_load_from_local_files(generator, tmp_path, layout):
    state = generator.vit.state_dict()
    if layout == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "dino.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "dino.pth"
        torch.save(state if layout == "flat" else official_layout(state), path)
    with torch.random.fork_rng():
        torch.manual_seed(1)  # different random init, so a silent no-op load would be caught
        loaded = DinoMaskGenerator(
            weights=str(path), num_clusters=3, resolution=64, model_kwargs=TINY
        )
    for k, v in state.items():
        assert torch.equal(loaded.vit.state_dict()[k], v), k


def test_weights_errors_name_the_file_and_the_problem(generator, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        DinoMaskGenerator(weights=str(tmp_path / "nothere.pth"), model_kwargs=TINY)
    state = dict(generator.vit.state_dict())
    del state["norm.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"partial\.pth.*missing \['norm\.weight'\]"):
        DinoMaskGenerator(weights=str(path), resolution=64, model_kwargs=TINY)
    path = tmp_path / "junk.pth"
    torch.save({"a": 1}, path)
    with pytest.raises(ValueError, match="junk.pth.*must map names to tensors"):
        load_dino_state_dict(path)
