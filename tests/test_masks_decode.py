"""RLE parsing and grid sampling (pixelclip/data/masks.py) against pycocotools, PIL and PyTorch."""

import data_factory
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.data import transforms as T
from PIL import Image
from pycocotools import mask as mask_utils

from pixelclip.data.masks import (
    RLEFormatError,
    grid_source_indices,
    pil_nearest_indices,
    rle_counts,
    sample_rle_masks,
    torch_nearest_indices,
)


def _masks_and_rles(height=37, width=53, num=12, seed=0):
    rng = np.random.default_rng(seed)
    masks = data_factory.random_masks(height, width, num, seed=seed)
    masks[1] = rng.random((height, width)) < 0.5  # many short runs
    masks[2] = True  # starts with a one-run (first count 0)
    masks[3] = False
    return masks, data_factory.encode(masks)


def test_rle_counts_reproduce_pycocotools_decode():
    # A large image makes runs longer than 31 (multi-character numbers, negative deltas).
    masks, rles = _masks_and_rles(301, 207, 10)
    counts, offsets = rle_counts(rles)
    assert offsets.shape == (11,)
    for n, rle in enumerate(rles):
        runs = counts[offsets[n] : offsets[n + 1]]
        flat = np.repeat(np.arange(runs.size) % 2, runs).astype(bool)  # column-major pixels
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        np.testing.assert_array_equal(flat.reshape(207, 301).T, decoded.astype(bool))
        np.testing.assert_array_equal(decoded.astype(bool), masks[n])


def test_rle_counts_accepts_bytes_and_uncompressed_lists():
    masks, rles = _masks_and_rles(20, 30, 4)
    expected, _ = rle_counts(rles)
    as_bytes = [{"size": r["size"], "counts": r["counts"].encode()} for r in rles]
    np.testing.assert_array_equal(rle_counts(as_bytes)[0], expected)
    # Uncompressed runs computed independently from the pixels.
    lists = []
    for m in masks:
        flat = m.T.ravel().astype(np.int8)
        change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
        lists.append({"size": [20, 30], "counts": np.diff(np.concatenate([[0], change])).tolist()})
    np.testing.assert_array_equal(rle_counts(lists)[0], expected)
    mixed = [lists[0], rles[1], as_bytes[2], lists[3]]
    np.testing.assert_array_equal(rle_counts(mixed)[0], expected)
    assert rle_counts([])[0].shape == (0,) and rle_counts([])[1].tolist() == [0]


@pytest.mark.parametrize(
    "rows, cols",
    [
        (np.arange(37), np.arange(53)),
        (np.arange(0, 37, 3), np.arange(52, -1, -2)),  # a flip
        (np.array([5, 5, 0, 36, 2, -1, 7]), np.array([1, 1, 52, 0, -1, 9, 9, 30])),  # any order
    ],
)
def test_sample_rle_masks_equals_indexing_decoded_masks(rows, cols):
    masks, rles = _masks_and_rles()
    out = sample_rle_masks(rles, rows, cols)
    expected = masks[:, rows.clip(0)][:, :, cols.clip(0)]
    expected[:, rows < 0, :] = False
    expected[:, :, cols < 0] = False
    assert out.dtype == bool and out.shape == (12, rows.size, cols.size)
    np.testing.assert_array_equal(out, expected)


def test_sample_rle_masks_empty_list():
    assert sample_rle_masks([], np.arange(4), np.arange(5)).shape == (0, 4, 5)


@pytest.mark.parametrize("in_size, out_size", [(37, 256), (640, 256), (1500, 1024), (2250, 1536),
                                               (999, 333), (7, 7), (5, 16), (1000, 3)])  # fmt: skip
def test_index_rules_match_pil_and_torch(in_size, out_size):
    ramp = np.arange(in_size)
    # PIL only resizes 8-bit images: resize the low and high bytes of the index separately.
    lo = Image.fromarray((ramp % 256).astype(np.uint8)[None]).resize((out_size, 1), Image.NEAREST)
    hi = Image.fromarray((ramp // 256).astype(np.uint8)[None]).resize((out_size, 1), Image.NEAREST)
    pil = np.asarray(lo)[0].astype(int) + 256 * np.asarray(hi)[0].astype(int)
    np.testing.assert_array_equal(pil_nearest_indices(in_size, out_size), pil)
    t = F.interpolate(torch.arange(in_size, dtype=torch.float64)[None, None], size=out_size)
    np.testing.assert_array_equal(torch_nearest_indices(in_size, out_size), t[0, 0].long().numpy())


def _reference_pipeline(masks, transforms, frame, grid):
    """The straightforward path: each full mask through detectron2, pad, PyTorch nearest."""
    out = []
    for m in masks:
        m = transforms.apply_segmentation(m.astype(np.uint8))
        padded = np.zeros(frame, np.uint8)
        padded[: m.shape[0], : m.shape[1]] = m
        small = F.interpolate(torch.from_numpy(padded)[None, None].float(), size=(grid, grid))
        out.append(small[0, 0].bool().numpy())
    return np.stack(out)


@pytest.mark.parametrize("seed", range(6))
def test_grid_sampling_equals_detectron2_transforms_then_nearest(seed):
    """The documented claim: exact equality with transform-then-resize of each full mask."""
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(40, 120, 2))
    masks, rles = _masks_and_rles(h, w, 8, seed)
    short = int(rng.integers(30, 150))
    crop = int(rng.integers(20, 100))
    np.random.seed(seed)
    augs = T.AugmentationList(
        [
            T.ResizeShortestEdge(short, max_size=160),
            T.RandomCrop("absolute", (crop, crop)),
            T.RandomFlip(prob=0.5),
        ]
    )
    aug_input = T.AugInput(np.zeros((h, w, 3), np.uint8))
    transforms = augs(aug_input)
    frame = (crop, crop)  # crops of a too-small image get padded to this frame
    grid = int(rng.choice([16, 32, 25]))
    rows, cols = grid_source_indices(transforms, (h, w), frame, grid)
    got = sample_rle_masks(rles, rows, cols)
    np.testing.assert_array_equal(got, _reference_pipeline(masks, transforms, frame, grid))


def test_grid_sampling_flips_columns():
    masks, rles = _masks_and_rles(32, 32, 4)
    flip = [T.HFlipTransform(32)]
    rows, cols = grid_source_indices(flip, (32, 32), (32, 32), 32)
    np.testing.assert_array_equal(sample_rle_masks(rles, rows, cols), masks[:, :, ::-1])


def test_unsupported_transform_is_refused():
    with pytest.raises(NotImplementedError, match="RotationTransform"):
        grid_source_indices([T.RotationTransform(10, 10, 30)], (10, 10), (10, 10), 4)


def test_bad_rle_errors_name_the_file_and_annotation():
    _, rles = _masks_and_rles(10, 10, 4)
    src = "sa_7.json"
    wrong_total = [rles[0], {"size": [10, 11], "counts": rles[1]["counts"]}]
    with pytest.raises(RLEFormatError, match=r"sa_7\.json: annotation 1: runs cover 100 pixels"):
        rle_counts(wrong_total, source=src)
    bad_char = [rles[0], rles[1], {"size": [10, 10], "counts": "ab~ \x01"}]
    with pytest.raises(RLEFormatError, match=r"sa_7\.json: annotation 2: malformed"):
        rle_counts(bad_char, source=src)
    truncated = [{"size": [10, 10], "counts": rles[1]["counts"] + "P"}]  # 'P' has the 0x20 bit
    with pytest.raises(RLEFormatError, match="annotation 0: malformed"):
        rle_counts(truncated, source=src)
    with pytest.raises(RLEFormatError, match="annotation 0: expected a COCO RLE"):
        rle_counts([{"counts": "00"}], source=src)
    mixed = [rles[0], data_factory.encode(np.zeros((1, 12, 10), bool))[0]]
    with pytest.raises(RLEFormatError, match="annotation 1 has size"):
        sample_rle_masks(mixed, np.arange(3), np.arange(3), source=src)
