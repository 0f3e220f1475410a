"""Class-agnostic masks from k-means on DINO patch features (METHOD §8, "DINO masks").

Each image is given to a self-supervised DINO ViT-S/16 (Caron et al., "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021, https://github.com/facebookresearch/dino); its
patch tokens are clustered per image with k-means into K clusters (default 16), and every cluster
becomes one binary mask on the patch grid, nearest-upsampled to the requested size. The masks of
one image therefore partition it (every pixel lies in exactly one mask; a cluster may be empty).

Differences from the reference PixelCLIP code, all deliberate:

- The ViT is built by timm (``vit_small_patch16_224.dino``, same parameter names as the official
  ``dino_deitsmall16_pretrain.pth``) from a local weight file; nothing is fetched via torch.hub.
- The image is resized to a fixed square ``resolution`` (default 640, a 40x40 grid: the grid the
  reference gets from its 640x640 weak view; any image size works). timm resizes the 14x14
  positional table on the fly (bicubic), like DINO's own ``interpolate_pos_encoding``.
- k-means is our batched torch implementation (:func:`kmeans`): spherical k-means (cosine) with
  k-means++ seeding from a local generator; the reference uses ``fast_pytorch_kmeans`` (euclidean
  on unnormalised tokens, random init from the global RNG, one Python call per image).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint.safe_io import read_checkpoint

if TYPE_CHECKING:
    from .writer import MaskFn

__all__ = ["kmeans", "DinoMaskGenerator", "dino_mask_fn", "load_dino_state_dict"]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@torch.no_grad()
def kmeans(features: Tensor, num_clusters: int, iters: int = 20, seed: int = 0) -> Tensor:
    """Per-image spherical k-means, batched over images.

    Metric: features are L2-normalised and points are assigned to the centroid of highest cosine
    similarity; centroids are the re-normalised means of their points (spherical k-means, Dhillon
    & Modha, "Concept Decompositions for Large Sparse Text Data using Clustering", 2001). DINO
    features are compared by cosine throughout the DINO paper (k-NN, attention keys), and on the
    unit sphere squared euclidean distance is 2 - 2 cos, so this is k-means in the geometry where
    token norms (which vary with position and contrast, not with content) play no role.

    Initialisation: k-means++ (Arthur & Vassilvitskii, "k-means++: The Advantages of Careful
    Seeding", SODA 2007) with weights proportional to the squared euclidean distance on the sphere
    (1 - max cos to the chosen centres). The K uniforms driving the sampling are drawn once from a
    local CPU ``torch.Generator(seed)`` and shared by all images through inverse-CDF sampling, so
    an image's result depends only on its own features and ``seed``: a batch gives the same labels
    as the images one by one, on any device, and the global RNG is never touched. When all
    remaining weights are zero (fewer distinct points than clusters), the next centre is drawn
    uniformly among the points not chosen yet.

    Empty clusters are left empty: the centroid keeps its previous value (it may win points back
    in a later iteration). Its mask is then all-false, which downstream mask filtering drops.
    Exactly ``iters`` Lloyd iterations are run (no early stop, hence no host synchronisation),
    followed by a final assignment; ties go to the lowest cluster index.

    Args:
        features: float Tensor[B, N, C] (any float dtype; computed in fp32 with autocast off).
        num_clusters: K, 1 <= K <= N.
        iters: number of Lloyd iterations (0 = labels from the k-means++ seeds).
        seed: seed of the local generator.

    Returns:
        LongTensor[B, N] of cluster ids in [0, K).
    """
    if features.ndim != 3:
        raise ValueError(f"kmeans expects features of shape (B, N, C), got {tuple(features.shape)}")
    b, n, _ = features.shape
    if not 1 <= num_clusters <= n:
        raise ValueError(f"num_clusters must be in [1, N={n}], got {num_clusters}")
    device = features.device
    with torch.autocast(device_type=device.type, enabled=False):
        x = F.normalize(features.float(), dim=-1)
        gen = torch.Generator().manual_seed(seed)
        uniforms = torch.rand(num_clusters, generator=gen, dtype=torch.float64).tolist()
        batch = torch.arange(b, device=device)

        # k-means++ seeding.
        first = torch.full((b,), min(int(uniforms[0] * n), n - 1), device=device)
        centers = [x[batch, first]]
        chosen = torch.zeros(b, n, dtype=torch.bool, device=device)
        chosen[batch, first] = True
        min_dist = (1.0 - torch.einsum("bnc,bc->bn", x, centers[0])).clamp_min(0)
        for j in range(1, num_clusters):
            weights = min_dist.double()
            total = weights.sum(dim=1, keepdim=True)
            weights = torch.where(total > 0, weights, (~chosen).double())
            cdf = weights.cumsum(dim=1)
            target = uniforms[j] * cdf[:, -1:]
            idx = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_max(n - 1)
            centers.append(x[batch, idx])
            chosen[batch, idx] = True
            dist = (1.0 - torch.einsum("bnc,bc->bn", x, centers[-1])).clamp_min(0)
            min_dist = torch.minimum(min_dist, dist)
        c = torch.stack(centers, dim=1)  # (B, K, C)

        # Lloyd iterations.
        for _ in range(iters):
            labels = torch.bmm(x, c.transpose(1, 2)).argmax(dim=-1)  # (B, N)
            sums = torch.zeros_like(c)
            sums.scatter_add_(1, labels.unsqueeze(-1).expand_as(x), x)
            counts = torch.zeros(b, num_clusters, device=device, dtype=x.dtype)
            counts.scatter_add_(1, labels, torch.ones_like(labels, dtype=x.dtype))
            c = torch.where(counts.unsqueeze(-1) > 0, F.normalize(sums, dim=-1), c)
        return torch.bmm(x, c.transpose(1, 2)).argmax(dim=-1)


def load_dino_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a DINO ViT checkpoint from a local file and map it to timm's parameter names.

    Accepted layouts: the official backbone file (``dino_deitsmall16_pretrain.pth``: a flat
    state dict whose names already match timm's ``VisionTransformer``), a timm state dict (also
    ``.safetensors``), and training checkpoints that wrap it under ``teacher`` / ``student`` /
    ``state_dict`` / ``model`` with ``module.`` / ``backbone.`` prefixes. Keys of the DINO
    projection head (``head.*``) are dropped: the generator uses patch tokens only.
    The file is read by :func:`pixelclip.checkpoint.read_checkpoint` (tensors only).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is refused, damaged or holds no tensor state dict.
    """
    # The official full checkpoint holds both networks; the teacher is the one DINO evaluates.
    wrappers = ("teacher", "state_dict", "model", "student")
    state = read_checkpoint(path, what="DINO weights", wrappers=wrappers)["model"]
    out = {}
    for name, value in state.items():
        for prefix in ("module.", "backbone."):
            name = name.removeprefix(prefix)
        if name.startswith("head."):
            continue
        out[name] = value
    return out


class DinoMaskGenerator(nn.Module):
    """K binary masks per image from k-means on DINO ViT patch tokens (METHOD §8).

    Frozen and always in eval mode: ``train(True)`` is ignored, parameters have
    ``requires_grad=False`` and :meth:`forward` runs without autograd, so it can be called inside
    a training step. Device-agnostic: move the module with ``.to(device)``; inputs are moved to
    the module's device and the masks are returned on the input's device.

    Args:
        model_name: timm model name; created with ``pretrained=False`` (never downloads).
        weights: local weight file (see :func:`load_dino_state_dict`); "" keeps the random
            initialisation (tests only; a warning is logged).
        num_clusters: K, masks per image.
        kmeans_iters: Lloyd iterations of :func:`kmeans`.
        resolution: side of the square image given to the ViT (a multiple of the patch size).
        seed: k-means seed.
        model_kwargs: extra ``timm.create_model`` arguments (e.g. ``depth`` / ``embed_dim`` for
            tiny test models).
    """

    def __init__(
        self,
        *,
        model_name: str = "vit_small_patch16_224.dino",
        weights: str = "",
        num_clusters: int = 16,
        kmeans_iters: int = 20,
        resolution: int = 640,
        seed: int = 0,
        model_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        import timm  # heavy; imported when a generator is built, not with the package

        if num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
        # dynamic_img_size: timm resizes the positional table to the input grid on every call,
        # so the 224-pixel checkpoint loads as is and any multiple of 16 can be used. With a
        # weight file the model is built on the meta device (no costly random init) and the
        # loaded tensors are assigned to it.
        with torch.device("meta" if weights else "cpu"):
            self.vit = timm.create_model(
                model_name,
                pretrained=False,
                num_classes=0,
                dynamic_img_size=True,
                **(model_kwargs or {}),
            )
        patch = self.vit.patch_embed.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        if resolution <= 0 or resolution % self.patch_size:
            raise ValueError(
                f"resolution must be a positive multiple of the patch size {self.patch_size}, "
                f"got {resolution}"
            )
        if num_clusters > (resolution // self.patch_size) ** 2:
            raise ValueError(
                f"num_clusters={num_clusters} exceeds the {resolution // self.patch_size}^2 "
                f"patches at resolution {resolution}"
            )
        if weights:
            self._load_weights(weights)
        else:
            logger.warning("DinoMaskGenerator: no weights given, using a RANDOM %s", model_name)
        self.num_clusters = num_clusters
        self.kmeans_iters = kmeans_iters
        self.resolution = resolution
        self.seed = seed
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)
        self.requires_grad_(False)
        super().train(False)

    def _load_weights(self, weights: str) -> None:
        state = load_dino_state_dict(weights)
        expected = self.vit.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong_shape = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        ]
        if missing or unexpected or wrong_shape:
            raise ValueError(
                f"{weights}: weights do not match the timm model "
                f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
                f"wrong shape {wrong_shape[:5]})"
            )
        # Keep the model's dtypes (fp32) whatever the file stores (e.g. fp16 exports).
        state = {k: v.to(expected[k].dtype) for k, v in state.items()}
        self.vit.load_state_dict(state, strict=True, assign=True)
        left = [
            n for n, t in [*self.vit.named_parameters(), *self.vit.named_buffers()] if t.is_meta
        ]
        if left:
            raise ValueError(f"{weights}: no values for {left[:5]} (not in the state dict)")
        logger.info("DinoMaskGenerator: loaded %d tensors from %s", len(state), weights)

    def train(self, mode: bool = True) -> DinoMaskGenerator:
        """Ignored: the generator always stays in eval mode."""
        return super().train(False)

    @torch.no_grad()
    def patch_features(self, images: Tensor) -> Tensor:
        """DINO patch tokens (after the final norm, class token dropped).

        Args:
            images: uint8 Tensor[B, 3, H, W], RGB.

        Returns:
            float Tensor[B, h*w, C] with h = w = resolution / patch size (row-major grid).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        x = images.to(device=self.pixel_mean.device, dtype=torch.float32) / 255.0
        # Antialiasing keeps large downscales (user photos -> 640) from aliasing.
        x = F.interpolate(
            x,
            size=(self.resolution, self.resolution),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        x = (x - self.pixel_mean) / self.pixel_std
        tokens = self.vit.forward_features(x)
        return tokens[:, self.vit.num_prefix_tokens :]

    @torch.no_grad()
    def forward(self, images: Tensor, out_size: int | tuple[int, int]) -> Tensor:
        """K binary masks per image.

        Args:
            images: uint8 Tensor[B, 3, H, W], RGB, any H and W.
            out_size: side of the square output, or (height, width).

        Returns:
            bool Tensor[B, K, out_h, out_w] on ``images.device``; for every image and pixel
            exactly one of the K masks is true (some masks may be empty).
        """
        size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
        feats = self.patch_features(images)
        labels = kmeans(feats, self.num_clusters, self.kmeans_iters, self.seed)  # (B, N)
        grid = self.resolution // self.patch_size
        onehot = F.one_hot(labels, self.num_clusters).transpose(1, 2)  # (B, K, N)
        masks = onehot.reshape(len(images), self.num_clusters, grid, grid).to(torch.uint8)
        # uint8 nearest interpolation copies one source cell per output pixel: still a partition.
        masks = F.interpolate(masks, size=size, mode="nearest")
        return masks.bool().to(images.device)


def dino_mask_fn(generator: torch.nn.Module) -> MaskFn:
    """Mask function of a :class:`DinoMaskGenerator` for
    :func:`pixelclip.masks.writer.generate_masks` (empty clusters are dropped)."""

    def fn(image: np.ndarray) -> list[dict[str, Any]]:
        device = generator.pixel_mean.device
        x = torch.from_numpy(image).permute(2, 0, 1)[None].to(device)
        masks = generator(x, image.shape[:2])[0].cpu().numpy()
        return [{"segmentation": m} for m in masks if m.any()]

    return fn
