"""masked_bce_loss (METHOD §5) against a naive per-pixel computation."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_to_float64

from pixelclip.modeling.loss import masked_bce_loss


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(2, 3, 5, 5, generator=g)
    targets = (torch.rand(2, 3, 5, 5, generator=g) > 0.5).float()
    covered = torch.rand(2, 5, 5, generator=g) > 0.4
    return logits, targets, covered


def _naive_loss(logits, targets, covered) -> float:
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for y in range(logits.shape[2]):
            for x in range(logits.shape[3]):
                if not covered[b, y, x]:
                    continue
                for j in range(logits.shape[1]):
                    z, t = logits[b, j, y, x].item(), targets[b, j, y, x].item()
                    p = 1.0 / (1.0 + math.exp(-z))
                    total += -(t * math.log(p) + (1 - t) * math.log(1 - p))
                    count += 1
    return total / count


def test_matches_naive():
    logits, targets, covered = _inputs()
    loss = masked_bce_loss(logits, targets, covered)
    assert loss.shape == () and loss.dtype == torch.float32
    # The same mean in float32 by torch's own BCE: the error a float32 computation makes.
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    expected = bce[covered[:, None].expand_as(bce)].mean()
    expected64 = torch.tensor(_naive_loss(logits, targets, covered), dtype=torch.float64)
    assert_close_to_float64(loss, expected64, expected)


def test_uncovered_pixels_have_no_influence():
    logits, targets, covered = _inputs(1)
    logits.requires_grad_(True)
    loss = masked_bce_loss(logits, targets, covered)
    loss.backward()
    changed = logits.detach().clone()
    changed[~covered[:, None].expand_as(changed)] = float("inf")
    changed_targets = torch.where(covered[:, None], targets, 1 - targets)
    assert masked_bce_loss(changed, changed_targets, covered).item() == pytest.approx(loss.item())
    outside = ~covered[:, None].expand_as(logits)
    assert torch.all(logits.grad[outside] == 0)
    assert torch.all(logits.grad[~outside] != 0)


def test_no_covered_pixel_gives_connected_zero():
    logits, targets, _ = _inputs(2)
    logits = logits.bfloat16().requires_grad_(True)
    loss = masked_bce_loss(logits, targets, torch.zeros(2, 5, 5, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_bad_shapes():
    logits, targets, covered = _inputs()
    with pytest.raises(ValueError, match="same shape"):
        masked_bce_loss(logits, targets[:, :2], covered)
    with pytest.raises(ValueError, match=r"covered must have shape \(2, 5, 5\)"):
        masked_bce_loss(logits, targets, covered[0])


def test_absent_channels_are_ignored_like_uncovered_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    targets = (torch.rand(2, 3, 4, 4) > 0.5).float()
    covered = torch.rand(2, 4, 4) > 0.3
    channels = torch.tensor([[True, True, True], [True, False, False]])
    got = masked_bce_loss(logits, targets, covered, channels)
    # the same as the mean over the present (image, channel) pairs at covered pixels

    def mean_over_present(logits, targets):
        terms = []
        for b in range(2):
            for j in range(3):
                if channels[b, j]:
                    bce = F.binary_cross_entropy_with_logits(
                        logits[b, j], targets[b, j], reduction="none"
                    )
                    terms.append(bce[covered[b]])
        return torch.cat(terms).mean()

    expected64 = mean_over_present(logits.double(), targets.double())
    assert_close_to_float64(got, expected64, mean_over_present(logits, targets))
    with pytest.raises(ValueError, match="channels"):
        masked_bce_loss(logits, targets, covered, channels[:, :2])
