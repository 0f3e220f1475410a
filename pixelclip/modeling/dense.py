"""Dense (per-position) features from an open_clip image tower (docs/METHOD.md §2).

:func:`build_dense_encoder` wraps ``model.visual`` into a :class:`DenseCLIPEncoder` that returns
features (B, D, h, w), keeping the ordinary global path (``visual(images)``) unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import residual_block, supports_block

__all__ = [
    "DENSE_VARIANTS",
    "ConvNeXtDenseEncoder",
    "DenseCLIPEncoder",
    "ViTDenseEncoder",
    "build_dense_encoder",
]

DENSE_VARIANTS = ("reference", "maskclip", "sclip", "clearclip", "naclip")


class DenseCLIPEncoder(nn.Module):
    """Base class: an open_clip image tower read out densely.

    Attributes:
        visual: the open_clip image tower itself (state-dict keys ``visual.<open_clip names>``).
        out_channels: D, the CLIP embedding width.
        stride: input pixels per feature cell.
    """

    def __init__(self, visual: nn.Module, out_channels: int, stride: int) -> None:
        super().__init__()
        self.visual = visual
        self.out_channels = int(out_channels)
        self.stride = int(stride)

    def forward(self, images: Tensor) -> Tensor:
        """Dense features.

        Args:
            images: (B, 3, H, W) float, CLIP-normalised; H and W multiples of ``stride``.

        Returns:
            (B, D, H / stride, W / stride), not normalised.
        """
        raise NotImplementedError

    def encode_global(self, images: Tensor) -> Tensor:
        """open_clip's own global image embedding ``visual(images)``: (B, D), not normalised."""
        return self.visual(images)

    def _check_images(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"expected float images (B, 3, H, W), got {tuple(images.shape)} {images.dtype}"
            )
        if images.shape[-2] % self.stride or images.shape[-1] % self.stride:
            raise ValueError(
                f"image size {tuple(images.shape[-2:])} must be a multiple of the stride "
                f"{self.stride} of this CLIP image tower"
            )


class ViTDenseEncoder(DenseCLIPEncoder):
    """Dense features of an open_clip ViT with a value-path readout in the last block.

    The blocks before the last run unchanged; the last block is replaced by ``variant``
    (x = its input tokens, h = ln_1(x), V/Q/K = thirds of the fused in-projection (q, k, v order),
    A(.) = out_proj(.) then the block's layer scale; s = head_dim**-0.5, softmax per head):

    * "reference" (PixelCLIP, docs/METHOD.md §2): y = A(V h); z = y + x_cls (the class token's
      input, broadcast); z = z + mlp(ln_2(z)).
    * "maskclip" (Zhou, Loy, Dai, "Extract Free Dense Labels from CLIP", ECCV 2022): z = A(V h);
      no residual and no MLP, as in MaskCLIP's value-embedding readout (and ClearCLIP's
      re-implementation of it).
    * "sclip" (Wang, Mei, Yuille, "SCLIP: Rethinking Self-Attention for Dense Vision-Language
      Inference", ECCV 2024): correlative attention W = softmax(s Q Q^T) + softmax(s K K^T);
      z = x + A(W V); z = z + mlp(ln_2(z)) (residual and MLP kept, as in SCLIP's code).
    * "clearclip" (Lan et al., "ClearCLIP: Decomposing CLIP Representations for Dense
      Vision-Language Inference", ECCV 2024): z = A(softmax(s Q Q^T) V); no residual, no MLP.
    * "naclip" (Hajimiri, Ben Ayed, Dolz, "Pay Attention to Your Neighbours", WACV 2025):
      z = A(softmax(s K K^T + G) V) with G a Gaussian of the patch-grid distance
      (std ``naclip_std`` = 5 cells, 0 for the class token); no residual, no MLP.

    Then ln_post and ``proj`` per token; the class token is dropped. Patch dropout is not
    applied (it would break the grid); attention masks are not used by open_clip's ViT.

    Positional table: the patch part is resized bicubically (align_corners=False) from the
    native grid to the input grid; the class position is kept. Bicubic resizing is linear in the
    table, so what is cached per grid size is the resize operator (two small matrices built
    with ``F.interpolate``), applied to the *current* table on every call. The cache therefore
    never holds stale values after an optimizer step or a weight load, and gradients flow to
    ``positional_embedding``. At the native grid the table is used as is.
    """

    def __init__(self, visual: VisionTransformer, variant: str = "reference", naclip_std=5.0):
        _check_vit(visual)
        if variant not in DENSE_VARIANTS:
            raise ValueError(f"unknown {variant!r}; choose from {DENSE_VARIANTS}")
        patch_h, patch_w = visual.patch_size
        width = visual.positional_embedding.shape[-1]
        out = visual.proj.shape[1] if visual.proj is not None else width
        super().__init__(visual, out, patch_h)
        self.variant = variant
        self.naclip_std = float(naclip_std)
        self.native_grid = tuple(int(g) for g in visual.grid_size)
        self._resize_ops: dict = {}  # (grid_h, grid_w, device, dtype) -> (M_h, M_w)
        self._neighbour_bias: dict = {}  # (grid_h, grid_w, device, dtype) -> (N+1, N+1)

    # -- positional table
    def _resize_matrix(self, n_in: int, n_out: int, ref: Tensor) -> Tensor:
        # Column k = bicubic resize of the k-th unit vector; (n_out, n_in). Width 1 stays exact.
        eye = torch.eye(n_in, dtype=torch.float64, device=ref.device).view(n_in, 1, n_in, 1)
        cols = F.interpolate(eye, size=(n_out, 1), mode="bicubic", align_corners=False)
        return cols.view(n_in, n_out).t().to(ref.dtype).contiguous()

    def positional_embedding(self, grid_h: int, grid_w: int) -> Tensor:
        """Positional table for a (grid_h, grid_w) grid: (1 + grid_h * grid_w, width)."""
        # Plain ints: under the ONNX exporter's tracer the sizes are tensors, and the tower runs
        # at one fixed size per protocol there (pixelclip/inference/onnx_graphs.py).
        grid_h, grid_w = int(grid_h), int(grid_w)
        table = self.visual.positional_embedding
        if (grid_h, grid_w) == self.native_grid:
            return table
        key = (grid_h, grid_w, table.device, table.dtype)
        if key not in self._resize_ops:
            self._resize_ops[key] = (
                self._resize_matrix(self.native_grid[0], grid_h, table),
                self._resize_matrix(self.native_grid[1], grid_w, table),
            )
        m_h, m_w = self._resize_ops[key]
        h0, w0 = self.native_grid
        patches = table[1:].reshape(h0, w0, -1)
        with torch.autocast(device_type=table.device.type, enabled=False):
            patches = torch.einsum("ik,klc->ilc", m_h, patches)
            patches = torch.einsum("jl,ilc->ijc", m_w, patches)
        return torch.cat([table[:1], patches.reshape(grid_h * grid_w, -1)], dim=0)

    # -- forward
    def forward(self, images: Tensor) -> Tensor:
        self._check_images(images)
        v = self.visual
        x = v.conv1(images)
        batch, _, grid_h, grid_w = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(batch, -1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding(grid_h, grid_w).to(x.dtype)
        x = v.ln_pre(x)
        x = self._run_blocks(x)
        z = self._last_block(x, grid_h, grid_w)  # (B, N, width), class token dropped
        z = v.ln_post(z)
        if v.proj is not None:
            z = z @ v.proj
        return z.transpose(1, 2).reshape(batch, -1, grid_h, grid_w).contiguous()

    def _run_blocks(self, x: Tensor) -> Tensor:
        """All blocks but the last on batch-first (B, N, width) tokens (see .attention)."""
        transformer = self.visual.transformer
        for block in transformer.resblocks[:-1]:
            if transformer.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(residual_block, block, x, use_reentrant=False)
            else:
                x = residual_block(block, x)
        return x

    def _last_block(self, x: Tensor, grid_h: int, grid_w: int) -> Tensor:
        block = self.visual.transformer.resblocks[-1]
        attn = block.attn
        width = x.shape[-1]
        h = block.ln_1(x)
        w_in, b_in = attn.in_proj_weight, attn.in_proj_bias

        def attn_out(t: Tensor) -> Tensor:
            return block.ls_1(F.linear(t, attn.out_proj.weight, attn.out_proj.bias))

        if self.variant in ("reference", "maskclip"):
            # Value path of the patch tokens only: queries and keys are never needed.
            b_v = None if b_in is None else b_in[2 * width :]
            y = attn_out(F.linear(h[:, 1:], w_in[2 * width :], b_v))
            if self.variant == "maskclip":
                return y
            z = x[:, :1] + y
            return z + block.ls_2(block.mlp(block.ln_2(z)))

        batch, tokens, _ = h.shape
        heads = attn.num_heads
        q, k, val = (
            t.reshape(batch, tokens, heads, -1).transpose(1, 2)
            for t in F.linear(h, w_in, b_in).chunk(3, dim=-1)
        )
        scale = q.shape[-1] ** -0.5
        if self.variant == "sclip":
            weights = (q @ q.transpose(-2, -1) * scale).softmax(-1)
            weights = weights + (k @ k.transpose(-2, -1) * scale).softmax(-1)
        elif self.variant == "clearclip":
            weights = (q @ q.transpose(-2, -1) * scale).softmax(-1)
        else:  # naclip
            logits = k @ k.transpose(-2, -1) * scale
            weights = (logits + self._neighbourhood(grid_h, grid_w, logits)).softmax(-1)
        y = attn_out((weights @ val).transpose(1, 2).reshape(batch, tokens, width))[:, 1:]
        if self.variant != "sclip":
            return y
        z = x[:, 1:] + y
        return z + block.ls_2(block.mlp(block.ln_2(z)))

    def _neighbourhood(self, grid_h: int, grid_w: int, ref: Tensor) -> Tensor:
        grid_h, grid_w = int(grid_h), int(grid_w)  # see positional_embedding
        key = (grid_h, grid_w, ref.device, ref.dtype)
        if key not in self._neighbour_bias:
            ys, xs = torch.meshgrid(
                torch.arange(grid_h, dtype=torch.float64),
                torch.arange(grid_w, dtype=torch.float64),
                indexing="ij",
            )
            ys, xs = ys.flatten(), xs.flatten()
            dist2 = (ys[:, None] - ys[None]) ** 2 + (xs[:, None] - xs[None]) ** 2
            bias = torch.zeros(grid_h * grid_w + 1, grid_h * grid_w + 1, dtype=torch.float64)
            bias[1:, 1:] = torch.exp(-dist2 / (2 * self.naclip_std**2))
            self._neighbour_bias[key] = bias.to(device=ref.device, dtype=ref.dtype)
        return self._neighbour_bias[key]


class ConvNeXtDenseEncoder(DenseCLIPEncoder):
    """Dense features of an open_clip ConvNeXt tower (timm trunk + projection head).

    trunk features (stride 32) -> the trunk head's norm per position (no pooling) -> the
    open_clip head (linear projection or MLP) per position (docs/METHOD.md §2). The global path
    pools first and then normalises; the dense path skips only the pooling.
    """

    def __init__(self, visual: TimmModel) -> None:
        trunk_head = getattr(visual.trunk, "head", None)
        if trunk_head is None or not isinstance(getattr(trunk_head, "norm", None), nn.Module):
            raise ValueError("ConvNeXt tower: expected a timm trunk head with a 'norm' layer")
        for name in ("pre_logits", "fc"):
            if not isinstance(getattr(trunk_head, name, nn.Identity()), nn.Identity):
                raise ValueError(f"ConvNeXt tower: unsupported trunk head layer {name!r}")
        if "pool" in dict(visual.head.named_children()):
            raise ValueError("ConvNeXt tower: attention-pooling heads have no dense readout")
        linears = [m for m in visual.head.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("ConvNeXt tower: expected a linear or MLP projection head")
        stride = visual.trunk.feature_info[-1]["reduction"]
        super().__init__(visual, linears[-1].out_features, stride)

    def forward(self, images: Tensor) -> Tensor:
        self._check_images(images)
        feats = self.visual.trunk.forward_features(images)  # (B, C, h, w)
        feats = self.visual.trunk.head.norm(feats)
        out = self.visual.head(feats.permute(0, 2, 3, 1))  # per position, channels last
        return out.permute(0, 3, 1, 2).contiguous()


def build_dense_encoder(visual: nn.Module, variant: str = "reference") -> DenseCLIPEncoder:
    """Wrap an open_clip image tower into its dense encoder.

    Args:
        visual: ``model.visual`` of an open_clip CLIP: a ``VisionTransformer`` or a
            ``TimmModel`` with a timm ConvNeXt trunk.
        variant: ViT last-block readout, one of :data:`DENSE_VARIANTS` (ConvNeXt ignores it).
    """
    if variant not in DENSE_VARIANTS:
        raise ValueError(f"unknown {variant!r}; choose from {DENSE_VARIANTS}")
    if isinstance(visual, VisionTransformer):
        return ViTDenseEncoder(visual, variant)
    if isinstance(visual, TimmModel) and type(visual.trunk).__name__ == "ConvNeXt":
        return ConvNeXtDenseEncoder(visual)
    raise ValueError(
        f"no dense encoder for image tower {type(visual).__name__}; supported: open_clip "
        "VisionTransformer, open_clip TimmModel with a timm ConvNeXt trunk"
    )


def _check_vit(visual: VisionTransformer) -> None:
    if visual.attn_pool is not None:
        raise ValueError("ViT with attentional pooling (CoCa-style) has no dense readout here")
    if visual.patch_size[0] != visual.patch_size[1]:
        raise ValueError(f"ViT patch size {visual.patch_size} must be square")
    if visual.positional_embedding.shape[0] != 1 + visual.grid_size[0] * visual.grid_size[1]:
        raise ValueError("ViT positional table does not match its grid plus one class token")
    for block in visual.transformer.resblocks:
        if not supports_block(block):
            raise ValueError(
                f"unsupported ViT block {type(block).__name__}: needs open_clip's block layout "
                "with nn.MultiheadAttention, a fused in-projection and no bias_k/bias_v"
            )
