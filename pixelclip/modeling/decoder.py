"""The training-only decoder ("ConvHead") that turns cost maps into mask logits (METHOD §5).

Each of the k cost maps of an image is an independent 1-channel input: the decoder's weights are
shared across clusters, so it learns a cluster-agnostic "cost map -> mask" refinement and the
clusters' identities live only in the prompts. The submodule names reproduce the reference
checkpoint's ``head.*`` keys (docs/REFERENCE_CHECKPOINT.md), so its decoder weights load directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ConvHead", "DoubleConv"]

# GroupNorm uses one group per this many channels (4 groups for 64, 2 for 32).
_CHANNELS_PER_GROUP = 16


class DoubleConv(nn.Module):
    """[conv3x3 (no bias) -> GroupNorm -> ReLU] x 2 at a constant width.

    Kept as a module with a ``double_conv`` Sequential so the state-dict keys are
    ``double_conv.{0,1,3,4}.*`` as in the reference checkpoint.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        groups = channels // _CHANNELS_PER_GROUP
        self.double_conv = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.double_conv(x)


class ConvHead(nn.Module):
    """Cost maps (B, k, h, w) -> mask logits (B, k, 2^n h, 2^n w), n = len(channels).

    With the default ``channels = (64, 32)`` (METHOD §5): conv3x3 1->64 (bias) -> ConvTranspose2d
    2x2/2 64->64 -> DoubleConv(64, GroupNorm 4) -> ConvTranspose2d 2x2/2 64->32 ->
    DoubleConv(32, GroupNorm 2) -> conv3x3 32->1 (bias). Stage i (1-based) is ``up{i}`` then
    ``conv{i}``; the stem is ``conv0`` and the output layer ``proj``.

    Speed and memory: the hidden activations are kept channels-last (NHWC), which oneDNN's CPU
    convolutions and GroupNorm use without layout reorders (docs/PERFORMANCE.md). The maps are
    independent (shared weights, GroupNorm per map), so with ``chunk_size`` > 0 they are decoded in
    groups of that many maps, each under activation checkpointing while gradients are needed: the
    same result, with the decoder's activation memory bounded by one group (plus its input and
    output) at the price of a second forward pass. On 2 CPU cores this is also faster (2 x 64
    maps, 64/32 channels, forward + backward: 6.5 s unchunked NCHW, 5.4 s NHWC, 2.9 s NHWC in
    groups of 16): a group's tensors stay small enough for the allocator to reuse instead of
    mapping fresh pages for every large activation.

    Args:
        channels: width of each upsampling stage (MODEL.PIXELCLIP.DECODER_CHANNELS); the stem has
            the first stage's width. Each must be a positive multiple of 16 (GroupNorm groups =
            channels // 16).
        chunk_size: MODEL.PIXELCLIP.DECODER_CHUNK_SIZE, maps per checkpointed group; 0 decodes
            all maps at once without checkpointing.
    """

    def __init__(self, channels: Sequence[int] = (64, 32), chunk_size: int = 0) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or any(c <= 0 or c % _CHANNELS_PER_GROUP for c in channels):
            raise ValueError(
                "channels (MODEL.PIXELCLIP.DECODER_CHANNELS) must be a non-empty list of positive "
                f"multiples of {_CHANNELS_PER_GROUP}; got {channels}"
            )
        if chunk_size < 0:
            raise ValueError(
                f"chunk_size (MODEL.PIXELCLIP.DECODER_CHUNK_SIZE) must be >= 0; got {chunk_size}"
            )
        self.num_stages = len(channels)
        self.chunk_size = int(chunk_size)
        self.conv0 = nn.Conv2d(1, channels[0], kernel_size=3, padding=1)
        width = channels[0]
        for i, out in enumerate(channels, start=1):
            setattr(self, f"up{i}", nn.ConvTranspose2d(width, out, kernel_size=2, stride=2))
            setattr(self, f"conv{i}", DoubleConv(out))
            width = out
        self.proj = nn.Conv2d(width, 1, kernel_size=3, padding=1)

    def forward(self, cost: Tensor, output_size: int | Sequence[int] | None = None) -> Tensor:
        """Decode every cost map independently.

        Args:
            cost: (B, k, h, w) cosine cost maps.
            output_size: if given, the logits are resized bilinearly (align_corners=False) to
                this size (METHOD §5: 80x80 -> MASK_RESOLUTION).

        Returns:
            (B, k, 4h, 4w) logits for the default two stages, or (B, k, *output_size).
        """
        if cost.dim() != 4:
            raise ValueError(f"cost must have shape (B, k, h, w); got {tuple(cost.shape)}")
        num_images, num_clusters, height, width = cost.shape
        maps = cost.reshape(num_images * num_clusters, 1, height, width)
        needs_grad = torch.is_grad_enabled() and (
            cost.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        if self.chunk_size == 0 or not needs_grad or maps.shape[0] <= self.chunk_size:
            x = self._decode(maps)
        else:
            x = torch.cat(
                [
                    checkpoint(self._decode, part, use_reentrant=False)
                    for part in maps.split(self.chunk_size)
                ]
            )
        if output_size is not None:
            x = F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)
        return x.reshape(num_images, num_clusters, *x.shape[-2:])

    def _decode(self, maps: Tensor) -> Tensor:
        """(N, 1, h, w) -> (N, 1, 4h, 4w) logits for the default two stages. The stem runs in
        float32 under autocast too (it reads the cost maps: 1 input channel, cheap)."""
        with torch.autocast(device_type=maps.device.type, enabled=False):
            x = self.conv0(maps.to(self.conv0.weight.dtype))
        x = x.contiguous(memory_format=torch.channels_last)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"conv{i}")(getattr(self, f"up{i}")(x))
        return self.proj(x).contiguous()
