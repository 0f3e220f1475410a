"""The two graphs of the ONNX export, as PyTorch modules (exported by :mod:`.onnx_export`).

* :class:`ImageGraph`: a uint8 RGB image (H, W, 3) of any size -> L2-normalised dense features.
  It holds the test protocol's normalisation (``MODEL.PIXEL_MEAN/STD``), its resizing or
  windowing and the dense read-out of the image tower (``MODEL.CLIP.DENSE_VARIANT``):

  - "whole": the image squashed to ``MODEL.CLIP.RESOLUTION`` squared (bilinear), the tower, the
    features bilinear to ``TEST.FEATURE_RESOLUTION`` squared: ``features`` (1, D, F, F);
  - "slide": the image padded to at least one crop, cut into the ``TEST.SLIDE_CROP`` windows
    every ``TEST.SLIDE_STRIDE`` pixels that :meth:`PixelCLIP._slide` uses (row-major, the last
    window of a row or column flush with the border), the tower on each: ``features``
    (N, D, g, g) with N windows.

* :class:`ScoreHead`: ``features``, ``text_embeddings`` (C, D) and ``image_size`` (2,) int64 =
  (H, W) -> ``scores`` (C, H, W), the cosine between each pixel's feature and each class
  embedding (rows normalised in the graph), combined as the protocol does: "whole" cosine maps
  bilinear to (H, W); "slide" per-window cosine maps bilinear to the crop, overlapping windows
  averaged.

Sizes that depend on the image are tensor operations (no Python ints taken from shapes), so the
traced graphs keep a dynamic image size and window count. The tower itself always runs at one
size (the square of "whole", the crop of "slide"): no positional table is resized in the graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ImageGraph", "ScoreHead", "protocol_settings"]


def protocol_settings(model) -> dict:
    return {
        "protocol": model.test_protocol,
        "clip_resolution": int(model.clip_resolution),
        "feature_resolution": int(model.test_feature_resolution),
        "slide_crop": int(model.slide_crop),
        "slide_stride": int(model.slide_stride),
        "stride": int(model.backbone.encoder.stride),
        "embed_dim": int(model.backbone.encoder.out_channels),
    }


def _window_starts(size: Tensor, crop: int, step: int) -> Tensor:
    """Start of each window along one axis of (padded) length ``size`` >= ``crop``: i * step, the
    last one moved to ``size - crop``; the positions of :meth:`PixelCLIP._slide`. (n,) int64."""
    count = (size - crop + step - 1) // step + 1
    starts = torch.arange(count, dtype=torch.int64) * step
    return torch.minimum(starts, (size - crop).to(torch.int64))


def _as_size(value) -> Tensor:
    return torch.as_tensor(value, dtype=torch.int64)


class ImageGraph(nn.Module):
    """The image side of the export: uint8 (H, W, 3) RGB -> normalised dense features.

    Args:
        model: a :class:`~pixelclip.modeling.meta_arch.PixelCLIP` (its tower, pixel statistics
            and test protocol are used; the module shares its weights).
        protocol: "whole" or "slide"; None = the model's ``test_protocol``.
    """

    def __init__(self, model, protocol: str | None = None) -> None:
        super().__init__()
        self.encoder = model.backbone.encoder
        self.settings = protocol_settings(model)
        self.protocol = protocol or model.test_protocol
        if self.protocol not in ("whole", "slide"):
            raise ValueError(f"unknown protocol {self.protocol!r}; choose from ['whole', 'slide']")
        self.settings["protocol"] = self.protocol
        self.register_buffer("mean", model.pixel_mean.detach().float().cpu().clone(), False)
        self.register_buffer("std", model.pixel_std.detach().float().cpu().clone(), False)

    def forward(self, image: Tensor) -> Tensor:
        """Args: image uint8 (H, W, 3) RGB. Returns float32 (N, D, h, w), unit vectors over D."""
        x = (image.permute(2, 0, 1).float() - self.mean) / self.std
        if self.protocol == "whole":
            side = self.settings["clip_resolution"]
            x = F.interpolate(x[None], size=(side, side), mode="bilinear", align_corners=False)
            features = self.encoder(x).float()
            side = self.settings["feature_resolution"]
            features = F.interpolate(
                features, size=(side, side), mode="bilinear", align_corners=False
            )
        else:
            features = self.encoder(self._windows(x)).float()
        return F.normalize(features, dim=1)

    def _windows(self, x: Tensor) -> Tensor:
        crop, step = self.settings["slide_crop"], self.settings["slide_stride"]
        height, width = _as_size(x.shape[1]), _as_size(x.shape[2])
        # Zero padding (in normalised units) up to one crop, as PixelCLIP._slide pads.
        pad_h = torch.clamp(crop - height, min=0)
        pad_w = torch.clamp(crop - width, min=0)
        x = torch.cat([x, x.new_zeros((3, pad_h, x.shape[2]))], dim=1)
        x = torch.cat([x, x.new_zeros((3, x.shape[1], pad_w))], dim=2)
        offsets = torch.arange(crop, dtype=torch.int64)
        rows = _window_starts(height + pad_h, crop, step)[:, None] + offsets  # (ny, crop)
        cols = _window_starts(width + pad_w, crop, step)[:, None] + offsets  # (nx, crop)
        windows = x[:, rows][:, :, :, cols]  # (3, ny, crop, nx, crop)
        return windows.permute(1, 3, 0, 2, 4).reshape(-1, 3, crop, crop)


class ScoreHead(nn.Module):
    """The vocabulary side: features of :class:`ImageGraph` and text embeddings -> (C, H, W).

    Args:
        settings: the image graph's ``settings`` (protocol, crop, stride, resolutions).
    """

    def __init__(self, settings: dict) -> None:
        super().__init__()
        self.settings = dict(settings)
        if self.settings["protocol"] == "slide":
            crop = self.settings["slide_crop"]
            grid = crop // self.settings["stride"]
            # Bilinear grid -> crop as a (crop, grid) matrix: column k is the resized k-th unit
            # vector, the very operator F.interpolate applies to every window's cosine map.
            eye = torch.eye(grid, dtype=torch.float64).view(grid, 1, grid, 1)
            cols = F.interpolate(eye, size=(crop, 1), mode="bilinear", align_corners=False)
            self.register_buffer("upsample", cols.view(grid, crop).t().float().contiguous())

    def forward(self, features: Tensor, text_embeddings: Tensor, image_size: Tensor) -> Tensor:
        """Args: features (N, D, h, w) unit vectors; text_embeddings (C, D); image_size (2,)
        int64 (H, W). Returns float32 (C, H, W) cosine scores."""
        classes = F.normalize(text_embeddings.float(), dim=-1)
        cosine = torch.einsum("ndhw,cd->nchw", features.float(), classes)
        height, width = image_size[0], image_size[1]
        if self.settings["protocol"] == "whole":
            return _bilinear_resize(cosine[0], height, width)
        return self._assemble(cosine, height, width)

    def _assemble(self, cosine: Tensor, height: Tensor, width: Tensor) -> Tensor:
        """Sum of every window's cosine map, bilinear to the crop and placed at its offset, over
        the number of windows covering each pixel; as ``L_y @ S @ L_x^T`` with S the (ny g, nx g)
        block matrix of the window maps and L the (size, n g) placement-and-upsampling matrix of
        an axis, so that no per-window loop is needed in the graph."""
        crop, step = self.settings["slide_crop"], self.settings["slide_stride"]
        full_h = torch.clamp(height, min=crop)
        full_w = torch.clamp(width, min=crop)
        left, cover_y = self._placement(full_h, crop, step)  # (Hp, ny g), (Hp,)
        right, cover_x = self._placement(full_w, crop, step)  # (Wp, nx g), (Wp,)
        grid = cosine.shape[-1]
        num_y = left.shape[1] // grid
        num_x = right.shape[1] // grid
        classes = cosine.shape[1]
        blocks = cosine.reshape(num_y, num_x, classes, grid, grid).permute(2, 0, 3, 1, 4)
        blocks = blocks.reshape(classes, num_y * grid, num_x * grid)
        total = left @ (blocks @ right.t())  # (C, Hp, Wp)
        count = cover_y[:, None] * cover_x[None, :]
        return (total / count)[:, :height, :width]

    def _placement(self, size: Tensor, crop: int, step: int) -> tuple[Tensor, Tensor]:
        starts = _window_starts(size, crop, step)  # (n,)
        offset = torch.arange(size, dtype=torch.int64)[:, None] - starts[None, :]  # (size, n)
        inside = (offset >= 0) & (offset < crop)
        rows = self.upsample[torch.clamp(offset, 0, crop - 1)]  # (size, n, g)
        rows = rows * inside[..., None].to(rows.dtype)
        return rows.reshape(rows.shape[0], -1), inside.sum(dim=1).to(rows.dtype)


def _linear_taps(out_size: Tensor, in_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Source indices and weights of 1-D linear resizing ``in_size`` -> ``out_size`` with
    ``align_corners=False``, as PyTorch computes them (source = (i + 0.5) * in / out - 0.5,
    clamped at 0; the upper neighbour clamped to the border)."""
    scale = torch.tensor(float(in_size)) / out_size.to(torch.float32)
    source = (torch.arange(out_size, dtype=torch.int64).to(torch.float32) + 0.5) * scale - 0.5
    source = torch.clamp(source, min=0.0)
    low = torch.clamp(source.floor().to(torch.int64), max=in_size - 1)
    high = torch.clamp(low + 1, max=in_size - 1)
    frac = source - low.to(torch.float32)
    return low, high, 1.0 - frac, frac


def _bilinear_resize(maps: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """(C, h, w) -> (C, height, width), bilinear, align_corners=False, sizes as 0-d tensors."""
    low, high, w_low, w_high = _linear_taps(height, maps.shape[1])
    maps = maps[:, low] * w_low[:, None] + maps[:, high] * w_high[:, None]
    low, high, w_low, w_high = _linear_taps(width, maps.shape[2])
    return maps[:, :, low] * w_low + maps[:, :, high] * w_high
