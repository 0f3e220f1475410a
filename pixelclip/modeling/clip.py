"""CLIP through open_clip's public API: model creation, safe weight loading, dense image features.

Two parts (docs/METHOD.md §2):

* :func:`create_clip` builds an open_clip CLIP model (eval, fp32, CPU) and loads weights from a
  local file or an open_clip pretrained tag, failing fast and clearly when the weights are not
  available offline. Files are read without unpickling arbitrary objects.
* :func:`build_dense_encoder` wraps an open_clip image tower (``model.visual``) into a
  :class:`DenseCLIPEncoder` that returns per-position features (B, D, h, w), keeping the
  ordinary global path (``visual(images)``) unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import warnings
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch
import torch.nn.functional as F
from open_clip.timm_model import TimmModel
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

__all__ = [
    "DENSE_VARIANTS",
    "ConvNeXtDenseEncoder",
    "DenseCLIPEncoder",
    "ViTDenseEncoder",
    "build_dense_encoder",
    "create_clip",
    "load_state_dict_file",
]

DENSE_VARIANTS = ("reference", "maskclip", "sclip", "clearclip", "naclip")
# Non-tensor entries of OpenAI's TorchScript CLIP archives.
_OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


# ----------------------------------------------------------------------------- model creation
def create_clip(
    model_name: str,
    *,
    pretrained: str = "",
    model_config: str = "",
    cache_dir: str = "",
    force_quick_gelu: bool = False,
) -> nn.Module:
    """Create an open_clip CLIP model in eval mode, fp32, on the CPU.

    Args:
        model_name: open_clip model name (``open_clip.list_models()``), or the file stem of
            ``model_config``.
        pretrained: "" for random weights (global RNG); a local weight file (.pt/.pth/.bin/
            .safetensors, a plain state dict or one wrapped as ``{"model": sd}`` /
            ``{"state_dict": sd}``, or OpenAI's original TorchScript archive, accepted only when
            its SHA-256 is one open_clip publishes); or an open_clip pretrained tag such as
            "openai", used from the local cache, downloaded only when the hub is reachable.
        model_config: path of an open_clip model-config JSON registered before creation.
        cache_dir: open_clip / Hugging Face cache folder ("" = their defaults).
        force_quick_gelu: build with QuickGELU (needed by OpenAI's weights).

    Returns:
        The open_clip model. Loaded weights match the model's state dict exactly.

    Raises:
        ValueError: unknown model or tag, bad config file, weights that do not match.
        FileNotFoundError: weight file missing, or tag weights neither cached nor downloadable.
    """
    if model_config:
        _register_model_config(model_config, model_name)
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip model {model_name!r}: see open_clip.list_models() for the built-in "
            "names, or pass model_config (MODEL.CLIP.MODEL_CONFIG) = a model-config JSON whose "
            "file stem is the model name"
        )
    checkpoint_path = (
        _resolve_weights(model_name, pretrained, cache_dir, force_quick_gelu) if pretrained else ""
    )
    # open_clip warns "No pretrained weights loaded" (root logger); untrue when we load next.
    quiet = _DropRecords("No pretrained weights loaded") if checkpoint_path else None
    if quiet:
        logging.getLogger().addFilter(quiet)
    try:
        # pretrained_text=False: never let open_clip fetch Hugging Face text towers by itself.
        model = open_clip.create_model(
            model_name,
            pretrained=None,
            precision="fp32",
            device="cpu",
            force_quick_gelu=force_quick_gelu,
            pretrained_text=False,
        )
    finally:
        if quiet:
            logging.getLogger().removeFilter(quiet)
    if checkpoint_path:
        _load_into(model, load_state_dict_file(checkpoint_path), checkpoint_path, model_name)
        logger.info("Loaded CLIP %s weights from %s", model_name, checkpoint_path)
    else:
        logger.info("CLIP %s has random weights (pretrained='')", model_name)
    return model.eval()


class _DropRecords(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _register_model_config(path: str, model_name: str) -> None:
    cfg_path = Path(path).expanduser()
    if not cfg_path.is_file():
        raise FileNotFoundError(f"model_config (MODEL.CLIP.MODEL_CONFIG): no file {cfg_path}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"model_config {cfg_path}: not a readable JSON file ({e})") from e
    if not isinstance(cfg, dict) or not all(
        k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")
    ):
        raise ValueError(
            f"model_config {cfg_path}: expected a JSON object with keys 'embed_dim', 'vision_cfg', "
            "'text_cfg' (an open_clip model config)"
        )
    if cfg_path.stem != model_name:
        raise ValueError(
            f"model_config {cfg_path} registers the model {cfg_path.stem!r} (its file stem), but "
            f"model_name (MODEL.CLIP.MODEL_NAME) is {model_name!r}; set it to {cfg_path.stem!r}"
        )
    open_clip.add_model_config(cfg_path)


def _resolve_weights(model_name: str, pretrained: str, cache_dir: str, quick_gelu: bool) -> str:
    """Local file path for ``pretrained`` (a file or a tag), downloading only when reachable."""
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path)
    if os.sep in pretrained or "/" in pretrained or path.suffix in _WEIGHT_SUFFIXES:
        raise FileNotFoundError(f"pretrained (MODEL.CLIP.PRETRAINED): no weight file {path}")
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        raise ValueError(
            f"unknown pretrained tag {pretrained!r} for model {model_name!r}; choose from "
            f"{open_clip.list_pretrained_tags_by_model(model_name)} (open_clip.list_pretrained()), "
            "or pass the path of a local weight file"
        )
    model_quick_gelu = quick_gelu or open_clip.get_model_config(model_name).get("quick_gelu", False)
    if cfg.get("quick_gelu", False) and not model_quick_gelu:
        raise ValueError(
            f"weights {model_name}:{pretrained} were trained with QuickGELU: set force_quick_gelu "
            "(MODEL.CLIP.FORCE_QUICK_GELU: True)"
        )
    cached = _find_cached(cfg, cache_dir)
    if cached:
        return cached

    def unavailable(why: str) -> FileNotFoundError:
        return FileNotFoundError(
            f"CLIP weights {model_name}:{pretrained} are not in the local cache (cache_dir="
            f"{cache_dir or 'default'!r}) and cannot be downloaded now ({why}). Fix: go online "
            "once (unset HF_HUB_OFFLINE) or set cache_dir (MODEL.CLIP.CACHE_DIR) to a folder that "
            "holds them; or pass a local weight file path as pretrained (MODEL.CLIP.PRETRAINED)."
        )

    if _hub_offline():
        raise unavailable("HF_HUB_OFFLINE is set")
    host = _download_host(cfg)
    if not _reachable(host):
        raise unavailable(f"{host} is unreachable")
    try:
        return open_clip.download_pretrained(cfg, cache_dir=cache_dir or None)
    except Exception as e:  # noqa: BLE001 -- any download failure gets the same advice
        raise unavailable(f"download failed: {e}") from e


def _find_cached(cfg: dict, cache_dir: str) -> str:
    """Path of the tag's weights if already on disk, without touching the network."""
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            if hf_hub.endswith("/"):  # open_clip's default file names, safetensors first
                repo_id = hf_hub.rstrip("/")
                names = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            else:
                repo_id, filename = os.path.split(hf_hub)
                stem, ext = os.path.splitext(filename)
                names = ([stem + ".safetensors"] if ext in (".bin", ".pth") else []) + [filename]
            for name in names:
                found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir or None)
                if isinstance(found, str) and os.path.isfile(found):
                    return found
    url = cfg.get("url", "")
    if url:
        target = Path(cache_dir or "~/.cache/clip").expanduser() / os.path.basename(url)
        if target.is_file():
            return str(target)
    return ""


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _download_host(cfg: dict) -> str:
    if cfg.get("hf_hub"):
        from huggingface_hub import constants

        return urlparse(constants.ENDPOINT).hostname or ""
    return urlparse(cfg.get("url", "")).hostname or ""


def _reachable(host: str, timeout: float = 3.0) -> bool:
    # One short TCP probe instead of the hub client's retries (~47 s offline, STACK_NOTES).
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------------------ weight files
def _known_openai_sha256() -> set[str]:
    """SHA-256 digests of OpenAI's TorchScript archives, as published in open_clip's URLs."""
    digests = set()
    for name, tag in open_clip.list_pretrained():
        url = open_clip.get_pretrained_cfg(name, tag).get("url", "")
        if "openaipublic" in url:
            digests.add(url.split("/")[-2])
    return digests


def _is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def load_state_dict_file(path: str) -> dict[str, Tensor]:
    """Read a state dict without unpickling arbitrary objects.

    Args:
        path: .safetensors, a ``torch.save`` file of tensors (read with ``weights_only=True``;
            ``{"model": sd}``, ``{"state_dict": sd}`` and a ``module.`` prefix are unwrapped), or
            OpenAI's TorchScript CLIP archive (only if its SHA-256 matches a published one:
            TorchScript archives can run code when loaded).

    Returns:
        Mapping from parameter name to CPU tensor.
    """
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path, device="cpu")
    elif _is_torchscript_archive(path):
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest not in _known_openai_sha256():
            raise ValueError(
                f"{path}: a TorchScript archive whose SHA-256 ({digest}) is not one of OpenAI's "
                "published CLIP checkpoints; refusing to load it (TorchScript can run code). "
                "Save a plain state dict (torch.save(model.state_dict())) or .safetensors instead."
            )
        with warnings.catch_warnings():  # torch.jit.load is deprecated, the archive format is not
            warnings.simplefilter("ignore", FutureWarning)
            sd = torch.jit.load(path, map_location="cpu").state_dict()
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 -- UnpicklingError, RuntimeError, EOFError...
            raise ValueError(
                f"{path}: cannot be read as a tensor-only checkpoint (weights_only=True): {e}"
            ) from e
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(sd).__name__}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def _load_into(model: nn.Module, sd: dict[str, Tensor], path: str, model_name: str) -> None:
    expected = model.state_dict()
    non_persistent = {n for n, _ in model.named_buffers()} - set(expected)
    sd = {k: v for k, v in sd.items() if k not in non_persistent and k not in _OPENAI_META_KEYS}
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match open_clip model {model_name!r}: "
            f"{len(missing)} missing keys {_head(missing)}, "
            f"{len(unexpected)} unexpected keys {_head(unexpected)}"
        )
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
             for k, v in sd.items() if v.shape != expected[k].shape]  # fmt: skip
    if wrong:
        raise ValueError(f"{path}: shapes differ from model {model_name!r}: {_head(wrong)}")
    model.load_state_dict(sd, strict=True)


def _head(items: list[str], n: int = 8) -> str:
    return str(items[:n])[:-1] + (", ...]" if len(items) > n else "]")


# ----------------------------------------------------------------------------- dense encoders
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
        transformer = self.visual.transformer
        if not transformer.batch_first:
            x = x.transpose(0, 1)
        for block in transformer.resblocks[:-1]:
            if transformer.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x if transformer.batch_first else x.transpose(0, 1)

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
        attn = getattr(block, "attn", None)
        if not isinstance(block, ResidualAttentionBlock) or not isinstance(
            attn, nn.MultiheadAttention
        ):
            raise ValueError(f"unsupported ViT block {type(block).__name__} (custom attention)")
        if attn.in_proj_weight is None or attn.bias_k is not None:
            raise ValueError("ViT attention must use a fused in-projection without bias_k/bias_v")
