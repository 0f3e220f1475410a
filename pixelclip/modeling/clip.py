"""CLIP through open_clip's public API: model creation and safe weight loading (docs/METHOD.md §2).

* :func:`create_clip` builds an open_clip CLIP model (eval, fp32, CPU) and loads weights from a
  local file or an open_clip pretrained tag, failing fast and clearly when the weights are not
  available offline. Files are read without unpickling arbitrary objects.
The dense read-out of the image tower lives in :mod:`pixelclip.modeling.dense`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import open_clip
from torch import Tensor, nn

from ..checkpoint.safe_io import abbreviated, read_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["create_clip", "create_clip_from_config", "load_state_dict_file"]

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
    # open_clip warns "No pretrained weights loaded" (root logger) since we never let it load
    # weights: untrue when we load them next, and said in our own words below otherwise.
    quiet = _DropRecords("No pretrained weights loaded")
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
        logging.getLogger().removeFilter(quiet)
    if checkpoint_path:
        _load_into(model, load_state_dict_file(checkpoint_path), checkpoint_path, model_name)
        logger.info("Loaded CLIP %s weights from %s", model_name, checkpoint_path)
    else:
        logger.info("CLIP %s built with random weights (no pretrained file)", model_name)
    return model.eval()


def create_clip_from_config(cfg) -> nn.Module:
    """:func:`create_clip` with the settings of ``cfg.MODEL.CLIP``."""
    return create_clip(
        cfg.MODEL.CLIP.MODEL_NAME,
        pretrained=cfg.MODEL.CLIP.PRETRAINED,
        model_config=cfg.MODEL.CLIP.MODEL_CONFIG,
        cache_dir=cfg.MODEL.CLIP.CACHE_DIR,
        force_quick_gelu=cfg.MODEL.CLIP.FORCE_QUICK_GELU,
    )


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


def load_state_dict_file(path: str) -> dict[str, Tensor]:
    """Read CLIP weights through the project's one safe reader (tensors only, strict formats).

    Args:
        path: .safetensors, a ``torch.save`` file of tensors (``{"model": sd}``,
            ``{"state_dict": sd}`` and a ``module.`` prefix are unwrapped), or OpenAI's
            TorchScript CLIP archive (only if its SHA-256 matches a published one: TorchScript
            archives can run code when loaded).

    Returns:
        Mapping from parameter name to CPU tensor.
    """
    return read_checkpoint(
        path,
        what="CLIP weights",
        wrappers=("state_dict", "model"),
        torchscript_sha256=_known_openai_sha256(),
    )["model"]


def _load_into(model: nn.Module, sd: dict[str, Tensor], path: str, model_name: str) -> None:
    expected = model.state_dict()
    non_persistent = {n for n, _ in model.named_buffers()} - set(expected)
    sd = {k: v for k, v in sd.items() if k not in non_persistent and k not in _OPENAI_META_KEYS}
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match open_clip model {model_name!r}: "
            f"{len(missing)} missing keys {abbreviated(missing)}, "
            f"{len(unexpected)} unexpected keys {abbreviated(unexpected)}"
        )
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
             for k, v in sd.items() if v.shape != expected[k].shape]  # fmt: skip
    if wrong:
        raise ValueError(f"{path}: shapes differ from model {model_name!r}: {abbreviated(wrong)}")
    model.load_state_dict(sd, strict=True)
