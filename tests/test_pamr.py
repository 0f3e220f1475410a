"""PAMR against a direct, pixel-by-pixel computation of its definition (inference/pamr.py)."""

import math

import pytest
import torch
from conftest import assert_close_to_float64

from pixelclip.inference.pamr import pamr


def _pamr_by_the_definition(image, scores, steps, dilations):
    """Loops over pixels, neighbours and channels; plain Python floats (float64)."""
    _, channels, height, width = image.shape
    num_classes = scores.shape[1]
    at = lambda t, c, y, x: float(t[0, c, min(max(y, 0), height - 1), min(max(x, 0), width - 1)])  # noqa: E731
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    affinity = {}
    for y in range(height):
        for x in range(width):
            neighbours = [(y + dy * d, x + dx * d) for d in dilations for dy, dx in offsets
                          if (dy, dx) != (0, 0)]  # fmt: skip
            logits = []
            for ny, nx in neighbours:
                total = 0.0
                for c in range(channels):
                    window = [at(image, c, y + dy * d, x + dx * d)
                              for d in dilations for dy, dx in offsets]  # fmt: skip
                    mean = sum(window) / len(window)
                    std = math.sqrt(sum((v - mean) ** 2 for v in window) / (len(window) - 1))
                    total += abs(at(image, c, y, x) - at(image, c, ny, nx)) / (1e-8 + 0.1 * std)
                logits.append(-total / channels)
            top = max(logits)
            exp = [math.exp(v - top) for v in logits]
            affinity[y, x] = [(ny, nx, e / sum(exp)) for (ny, nx), e in zip(neighbours, exp)]
    current = scores.double().clone()
    for _ in range(steps):
        nxt = torch.zeros_like(current)
        for k in range(num_classes):
            for y in range(height):
                for x in range(width):
                    nxt[0, k, y, x] = sum(
                        a * at(current, k, ny, nx) for ny, nx, a in affinity[y, x]
                    )
        current = nxt
    return current


@pytest.mark.parametrize(("steps", "dilations"), [(1, (1,)), (3, (1, 2)), (2, (8, 16))])
def test_pamr_matches_its_definition(steps, dilations):
    generator = torch.Generator().manual_seed(steps)
    image = torch.rand(1, 3, 7, 9, generator=generator)
    image[:, :, :, 5:] += 1.0  # an edge PAMR should respect
    scores = torch.rand(1, 2, 7, 9, generator=generator)
    expected = _pamr_by_the_definition(image.double(), scores.double(), steps, dilations)
    fp64 = pamr(image.double(), scores.double(), steps, dilations)
    torch.testing.assert_close(fp64, expected, rtol=0, atol=1e-12)
    # float32: within a few float32 roundings per neighbour and step of the definition.
    fp32 = pamr(image, scores, steps, dilations)
    assert fp32.dtype == torch.float32
    assert_close_to_float64(fp32.double(), expected, terms=16 * len(dilations) * steps)


def test_pamr_keeps_regions_apart_and_preserves_constant_maps():
    image = torch.zeros(1, 3, 12, 12)
    image[:, :, :, 6:] = 1.0  # two flat regions
    scores = torch.zeros(1, 1, 12, 12)
    scores[:, :, :, :6] = 1.0
    refined = pamr(image, scores, steps=10, dilations=(1, 2))
    assert refined[0, 0, :, :5].min() > 0.99 and refined[0, 0, :, 7:].max() < 0.01
    constant = torch.full((1, 2, 12, 12), 0.3)
    torch.testing.assert_close(pamr(torch.rand(1, 3, 12, 12), constant), constant)


def test_pamr_resizes_scores_and_checks_its_input():
    out = pamr(torch.rand(1, 3, 16, 20), torch.rand(1, 4, 4, 5), steps=2, dilations=(1,))
    assert out.shape == (1, 4, 16, 20)
    assert torch.equal(pamr(torch.rand(1, 3, 4, 5), out[:, :, :4, :5], steps=0), out[:, :, :4, :5])
    with pytest.raises(ValueError, match="expected image"):
        pamr(torch.rand(3, 4, 5), torch.rand(1, 2, 4, 5))
    with pytest.raises(ValueError, match="dilations >= 1"):
        pamr(torch.rand(1, 3, 4, 5), torch.rand(1, 2, 4, 5), dilations=(0,))
