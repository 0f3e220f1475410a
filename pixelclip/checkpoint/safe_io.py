"""The one way in for every weight file and config file, and the atomic way out.

Every checkpoint, CLIP / SAM / DINO weight file, embedding cache and YAML config the project reads
passes through this module, so the rules hold by construction (docs/RELIABILITY.md):

* a path must name a local regular file: URLs, ``?query`` suffixes (detectron2's
  ``matching_heuristics``) and pickle formats (``.pkl``, ``.pickle``, ``.pyth``, in any case) are
  refused before anything is opened;
* the format is decided by the file's bytes, not its name: a PyTorch zip archive (read with
  ``torch.load(weights_only=True)``, passed explicitly, so no environment variable can turn
  unpickling on) or a ``.safetensors`` file; anything else -- legacy pickles, TorchScript
  archives unless the caller allows a published digest, empty files -- is refused;
* the zip's CRC-32 checksums are verified before loading (torch itself loads flipped bytes
  silently) and floating tensors must be finite;
* YAML is parsed with ``yaml.safe_load`` (a ``!!python/...`` tag is an error naming the file,
  never a fallback to unsafe loading as detectron2's ``merge_from_file`` does), ``_BASE_``
  includes must be local files and may not form a cycle, and unknown keys name the file;
* files are written through a temporary file, fsync and rename, with the permissions the umask
  gives a new file (0644 by default).
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import uuid
import warnings
import zipfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import IO, Any

import torch
import yaml
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_SUFFIXES",
    "PICKLE_SUFFIXES",
    "atomic_save",
    "check_local_file",
    "merge_config_file",
    "read_checkpoint",
    "read_config_dict",
    "read_tensor_file",
    "write_atomically",
]

PICKLE_SUFFIXES = (".pkl", ".pickle", ".pyth")
CONFIG_SUFFIXES = (".yaml", ".yml")
_ZIP_MAGIC = b"PK\x03\x04"
_SAFETENSORS_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


# ------------------------------------------------------------------------------------ paths
def check_local_file(path: str | os.PathLike, what: str = "file") -> str:
    """Return ``path`` as a string if it names a local regular file that may be read.

    Args:
        path: the path as the user gave it.
        what: what the file is, for messages ("checkpoint", "config file", ...).

    Raises:
        ValueError: a URL, a ``?query`` suffix, a pickle suffix (any case), or not a regular
            file (a folder, FIFO or device).
        FileNotFoundError: nothing there.
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if "://" in text:
        raise ValueError(
            f"{what} {text!r}: only local files are read (no URLs); download it and pass its path"
        )
    bare = text.split("?", 1)[0].lower()
    if bare.endswith(PICKLE_SUFFIXES):
        raise ValueError(
            f"{what} {text!r}: pickle files are refused (loading them can run arbitrary code); "
            "use a .pth file of tensors (torch.save of a state dict) or .safetensors"
        )
    if "?" in text and not os.path.exists(text):
        raise ValueError(
            f"{what} {text!r}: query suffixes such as '?matching_heuristics=True' are not "
            "supported; pass the plain file path"
        )
    if not os.path.exists(text):
        raise FileNotFoundError(f"{what} not found: {text}")
    if not os.path.isfile(text):
        raise ValueError(f"{what} {text!r}: not a regular file")
    return text


# ---------------------------------------------------------------------------------- weights
def _sniff(path: str) -> str:
    """'zip', 'safetensors' or a reason the file is neither."""
    with open(path, "rb") as f:
        head = f.read(16)
        size = os.fstat(f.fileno()).st_size
    if not head:
        return "the file is empty (0 bytes)"
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= min(_SAFETENSORS_MAX_HEADER, size - 8) and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80":
        return (
            "a bare pickle or a legacy (pre-1.6) torch.save file; these formats are refused "
            "(re-save it with a current torch.save, or as .safetensors)"
        )
    return "not a PyTorch zip archive nor a .safetensors file"


def _verify_zip(path: str) -> zipfile.ZipFile:
    """Open the archive and check every member's CRC-32 (torch does not)."""
    try:
        zf = zipfile.ZipFile(path)
        bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ValueError(
            f"{path}: damaged checkpoint (truncated or corrupt zip archive): {e}"
        ) from e
    except Exception as e:  # noqa: BLE001 -- zlib.error and friends from a corrupt member
        raise ValueError(f"{path}: damaged checkpoint (unreadable zip member): {e}") from e
    if bad is not None:
        zf.close()
        raise ValueError(
            f"{path}: damaged checkpoint: checksum (CRC-32) mismatch in member {bad!r}; the file "
            "was corrupted on disk or in transfer. Download or copy it again."
        )
    return zf


def _is_torchscript(zf: zipfile.ZipFile) -> bool:
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def read_tensor_file(
    path: str | os.PathLike, *, what: str = "checkpoint", torchscript_sha256: Collection[str] = ()
) -> Any:
    """Read a weight file as tensors and builtin containers; nothing else is ever unpickled.

    Args:
        path: a local PyTorch zip archive (``torch.save``) or ``.safetensors`` file, whatever its
            name.
        what: what the file is, for messages.
        torchscript_sha256: SHA-256 digests of TorchScript archives that may be loaded (OpenAI's
            published CLIP files); any other TorchScript archive is refused. Its state dict is
            returned.

    Returns:
        What the file holds (a safetensors file gives a name -> tensor dict), on the CPU.

    Raises:
        ValueError: refused or damaged, with the file named; FileNotFoundError.
    """
    path = check_local_file(path, what)
    kind = _sniff(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as e:  # noqa: BLE001 -- SafetensorError, OSError...
            raise ValueError(
                f"{path}: damaged .safetensors file (bad header or truncated): {e}"
            ) from e
    if kind != "zip":
        raise ValueError(f"{what} {path}: {kind}")
    with _verify_zip(path) as zf:
        torchscript = _is_torchscript(zf)
    if torchscript:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest not in torchscript_sha256:
            raise ValueError(
                f"{path}: a TorchScript archive (SHA-256 {digest}) that is not one of the "
                "published files accepted here; refused, since TorchScript can run code. Save a "
                "plain state dict (torch.save(model.state_dict())) or .safetensors instead."
            )
        with warnings.catch_warnings():  # torch.jit.load is deprecated, the archive format is not
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(path, map_location="cpu").state_dict()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- UnpicklingError, RuntimeError, ...
        found = []
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 -- only a better message is at stake
            pass
        if found:
            raise ValueError(
                f"{path}: refused to load: it holds Python objects other than tensors and "
                f"builtin containers ({', '.join(found[:8])}), and unpickling them could run "
                "arbitrary code (only tensors are read: torch.load weights_only=True). Re-save "
                "the state dict from a trusted environment (torch.save({'model': state_dict}))."
            ) from e
        raise ValueError(f"{path}: cannot be read as a tensor-only PyTorch checkpoint: {e}") from e


def read_checkpoint(
    path: str | os.PathLike,
    *,
    what: str = "checkpoint",
    wrappers: tuple[str, ...] = ("model",),
    torchscript_sha256: Collection[str] = (),
) -> dict:
    """Read a checkpoint safely (:func:`read_tensor_file`) and check its state dict.

    Args:
        path: the file.
        what: what it is, for messages.
        wrappers: entries that may hold the state dict, tried in order (``{"model": sd}`` is
            detectron2's layout; DINO and others use ``"state_dict"``, ``"teacher"``...). A dict
            with none of them is taken as a bare state dict.
        torchscript_sha256: see :func:`read_tensor_file`.

    Returns:
        ``{"model": state_dict, **other entries}``; a ``module.`` prefix (DDP) is removed.

    Raises:
        ValueError: unreadable or damaged (see :func:`read_tensor_file`); not a dict; a state
            dict entry that is not ``str -> Tensor``; a floating tensor with NaN or Inf. The
            message names the file and the first offending keys.
    """
    data = read_tensor_file(path, what=what, torchscript_sha256=torchscript_sha256)
    path = os.fspath(path)
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a dict (a state dict or {{'model': ...}}), got {type(data).__name__}"
        )
    key = next((w for w in wrappers if isinstance(data.get(w), Mapping)), None)
    data = dict(data) if key == "model" else {"model": data[key] if key else data}
    sd = data["model"]
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: the state dict must map names to tensors; bad entries: "
                         f"{abbreviated([repr(k) for k in bad])}")  # fmt: skip
    nonfinite = [k for k, v in sd.items() if not is_finite_weight(k, v)]
    if nonfinite:
        raise ValueError(
            f"{path}: {len(nonfinite)} tensors hold NaN or Inf: {abbreviated(nonfinite)}"
        )
    if sd and all(k.startswith("module.") for k in sd):  # saved from a DDP-wrapped model
        data["model"] = {k[len("module.") :]: v for k, v in sd.items()}
    return data


def is_finite_weight(name: str, value: Tensor) -> bool:
    """No NaN, and no Inf outside attention masks (whose -inf entries are what they mean)."""
    if not value.is_floating_point():
        return True
    if name.endswith("attn_mask"):
        return not bool(value.isnan().any())
    return bool(value.isfinite().all())


def abbreviated(items: list[str], n: int = 10) -> str:
    """``items`` as a list literal, cut after ``n`` with the number left out (error messages)."""
    return str(items[:n])[:-1] + (f", ... ({len(items) - n} more)]" if len(items) > n else "]")


# ---------------------------------------------------------------------------------- configs
class _NoDuplicatesLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (a silent override)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_config_dict(path: str | os.PathLike, _chain: tuple[str, ...] = ()) -> dict:
    """Read a YAML config and its ``_BASE_`` files (local, no Python tags) into one dict.

    Bases are read first and the file's own keys merged over them, mapping by mapping, as
    detectron2 does; a relative ``_BASE_`` is relative to the file naming it.

    Raises:
        ValueError: a URL or pickle path, not ``.yaml``/``.yml``, a YAML syntax error, a Python
            object tag, a duplicate key, a top level that is not a mapping, a ``_BASE_`` cycle;
            the message names the file. FileNotFoundError: a missing file or base.
    """
    where = f"config file (via _BASE_ of {_chain[-1]})" if _chain else "config file"
    text = check_local_file(path, where)
    if not text.lower().endswith(CONFIG_SUFFIXES):
        raise ValueError(f"{where} {text!r}: expected a YAML file ({'/'.join(CONFIG_SUFFIXES)})")
    real = os.path.realpath(text)
    if real in _chain:
        raise ValueError(f"{text}: _BASE_ cycle: {' -> '.join([*_chain, real])}")
    try:
        with open(text, encoding="utf-8") as f:
            loaded = yaml.load(f, Loader=_NoDuplicatesLoader)  # noqa: S506 -- a SafeLoader
    except yaml.constructor.ConstructorError as e:
        raise ValueError(
            f"{text}: refused: {e.problem or e} ({e.problem_mark or e.context_mark}); configs are "
            "read without Python object tags (!!python/...)"
        ) from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{text}: not a valid YAML config: {e}") from e
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{text}: a config must be a YAML mapping, got {type(loaded).__name__}")
    bases = loaded.pop("_BASE_", None)
    if bases is None:
        return loaded
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ValueError(f"{text}: _BASE_ must be a path or a list of paths, got {bases!r}")
    merged: dict = {}
    for base in bases:
        base_path = os.path.join(os.path.dirname(text), os.path.expanduser(base))
        _merge_into(read_config_dict(base_path, (*_chain, real)), merged, text)
    _merge_into(loaded, merged, text)
    return merged


def _merge_into(src: dict, dst: dict, source: str) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and key in dst:
            if not isinstance(dst[key], dict):
                raise ValueError(f"{source}: {key!r} is a mapping here but not in its _BASE_")
            _merge_into(value, dst[key], source)
        else:
            dst[key] = value


def merge_config_file(cfg, path: str | os.PathLike) -> None:
    """Merge a YAML config file into a detectron2 ``CfgNode``, safely (the only way in).

    Replaces ``cfg.merge_from_file`` (which falls back to ``yaml.unsafe_load`` and fetches
    ``_BASE_`` URLs). Keys are checked against ``cfg``.

    Raises:
        ValueError: see :func:`read_config_dict`; a key ``cfg`` does not have, or a
            ``VERSION`` other than ``cfg``'s, named with the file.
    """
    loaded = read_config_dict(path)
    version = loaded.get("VERSION", cfg.get("VERSION"))
    if version != cfg.get("VERSION"):
        raise ValueError(
            f"{os.fspath(path)}: VERSION {version!r} is not supported (expected "
            f"{cfg.get('VERSION')!r}, detectron2's current config version)"
        )
    try:
        cfg.merge_from_other_cfg(type(cfg)(loaded))
    except (KeyError, ValueError) as e:
        message = e.args[0] if e.args else e
        raise ValueError(f"{os.fspath(path)}: {message}") from e


# ---------------------------------------------------------------------------------- writing
def _fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(
    path: str | os.PathLike,
    write: Callable[[IO[bytes]], None],
    verify: Callable[[str], None] | None = None,
) -> None:
    """``write(f)`` into a hidden ``.<name>.<pid>.<random>.tmp`` beside ``path``, fsync, rename.
    With ``verify`` the temporary name ends in ``path``'s suffix too, for readers that go by it;
    without, it does not, so that a stale one left by a crash is never listed as a ``*.json`` /
    ``*.png`` of the dataset.

    A crash at any point leaves either the old ``path`` or the new one, never a partial file;
    at worst a stale ``.tmp`` file stays behind. The file gets the permissions the umask gives
    any new file (it is opened with "x", not ``mkstemp``'s 0600).

    Args:
        path: the destination.
        write: writes the content into the open binary file.
        verify: called with the temporary file's path after writing; if it raises, nothing is
            written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if verify is not None else ""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp{suffix}"
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_save(
    path: str | os.PathLike, data: dict, verify: Callable[[str], None] | None = None
) -> None:
    """Save ``data`` atomically: ``.safetensors`` (``data`` maps names to tensors) or
    ``torch.save`` for any other suffix. See :func:`write_atomically`."""
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import save

        # safetensors refuses views and shared storage: write independent contiguous copies.
        blob = save({k: v.detach().contiguous().clone() for k, v in data.items()})
        write_atomically(path, lambda f: f.write(blob), verify)
    else:
        write_atomically(path, lambda f: torch.save(data, f), verify)
