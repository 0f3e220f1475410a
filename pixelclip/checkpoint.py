"""Checkpoints in and out: safe reading, the reference implementation's layout, open_clip export.

* :func:`read_checkpoint` reads ``torch.save`` files with ``weights_only=True`` (tensors and
  builtin containers only: never arbitrary unpickling) and ``.safetensors`` files.
* :func:`is_reference_state_dict` / :func:`convert_reference_state_dict` recognise and convert the
  state dict of the reference PixelCLIP code (github.com/cvlab-kaist/PixelCLIP, the layout is
  described in docs/REFERENCE_CHECKPOINT.md) into ours, reporting every key they drop or cannot map.
* :class:`PixelCLIPCheckpointer` is detectron2's ``DetectionCheckpointer`` that reads files safely,
  converts reference checkpoints on the fly (so ``MODEL.WEIGHTS pixelclip_vit_base.pth`` works) and
  writes checkpoints atomically (a run killed while saving resumes from the previous checkpoint).
* :func:`to_open_clip_state_dict` turns our state dict back into a plain open_clip CLIP state dict.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LOGIT_SCALE",
    "ConversionReport",
    "PixelCLIPCheckpointer",
    "atomic_save",
    "check_state_dict_matches",
    "convert_reference_state_dict",
    "fill_teacher_from_student",
    "is_reference_state_dict",
    "read_checkpoint",
    "to_open_clip_state_dict",
]

# Our layout (pixelclip/modeling: backbone, head, teacher).
STUDENT, TEACHER, TEXT = "backbone.encoder.visual.", "teacher.encoder.visual.", "sem_seg_head.text."
PROMPTS, DECODER = "sem_seg_head.prompts.prompt_tokens", "sem_seg_head.decoder."

# The reference layout (docs/REFERENCE_CHECKPOINT.md).
REF_CLIP = "sem_seg_head.predictor.clip_model."
REF_PROMPTS = "sem_seg_head.predictor.prompt_tokens"
REF_TEACHER = "teacher_encoder."
REF_DECODER = "head."
# Entries of open_clip's CLIP text tower (top-level names of open_clip.CLIP).
TEXT_NAMES = ("token_embedding", "positional_embedding", "transformer", "ln_final")
TEXT_NAMES += ("text_projection",)
# Keys without which a tower cannot be complete (checked by convert_reference_state_dict).
REQUIRED_TEXT = ("token_embedding.weight", "positional_embedding", "ln_final.weight")
REQUIRED_TEXT += ("ln_final.bias",)
REQUIRED_VIT = ("conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight")
REQUIRED_VIT += ("ln_pre.bias", "ln_post.weight", "ln_post.bias", "proj")

# ln(100): the logit scale of OpenAI's CLIP weights (CLIP training clamps the scale at 100).
# PixelCLIP never changes it; see to_open_clip_state_dict.
DEFAULT_LOGIT_SCALE = math.log(100.0)
_BLOCK = re.compile(r"^(.*?transformer\.resblocks\.)(\d+)\.(.+)$")


# ----------------------------------------------------------------------------------- reading
def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint without unpickling arbitrary objects.

    Args:
        path: ``.safetensors`` (returned as ``{"model": state_dict}``), or a ``torch.save`` file of
            tensors and builtin containers (read with ``weights_only=True``); a dict without a
            ``"model"`` entry is taken as a bare state dict and wrapped the same way.

    Returns:
        A dict whose ``"model"`` entry maps names to CPU tensors, plus any other entries.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds non-tensor Python objects (refused, named), cannot be read
            (truncated or corrupt), or its ``"model"`` entry is not a name -> tensor mapping.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            data = {"model": load_file(path, device="cpu")}
        except Exception as e:  # noqa: BLE001 -- SafetensorError, OSError...
            raise ValueError(f"{path}: not a readable .safetensors file (truncated?): {e}") from e
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            try:
                found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except Exception:  # noqa: BLE001 -- only a better message is at stake
                found = []
            what = f" ({', '.join(found)})" if found else ""
            raise ValueError(
                f"{path}: refused to load: the file holds Python objects other than tensors and "
                f"builtin containers{what}, and unpickling them could run arbitrary code. Only "
                "tensor checkpoints are read (torch.load weights_only=True); re-save the state "
                "dict from a trusted environment (torch.save({'model': state_dict}))."
            ) from e
        except Exception as e:  # noqa: BLE001 -- RuntimeError, EOFError, ...
            raise ValueError(
                f"{path}: cannot be read as a PyTorch checkpoint (truncated or corrupt file?): {e}"
            ) from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict (a state dict or {{'model': ...}}), got "
                         f"{type(data).__name__}")  # fmt: skip
    if not isinstance(data.get("model"), Mapping):
        data = {"model": data}
    sd = data["model"]
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: 'model' must map names to tensors; bad entries: {bad[:5]}")
    if sd and all(k.startswith("module.") for k in sd):  # saved from a DDP-wrapped model
        data["model"] = {k[len("module.") :]: v for k, v in sd.items()}
    return data


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


def _write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """``write(f)`` into a hidden ``.<name>.<random>.tmp`` next to ``path``, fsync, rename.

    A crash at any point leaves either the old ``path`` or the new one, never a partial file;
    at worst a stale ``.tmp`` file stays behind (removed by the next checkpoint save).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Opened with "x" rather than mkstemp, so the file gets the usual umask-based permissions.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_save(
    path: str | os.PathLike, data: dict, verify: Callable[[str], None] | None = None
) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never half-written).

    The temporary file is flushed to disk (fsync) before the rename.

    Args:
        path: ``.safetensors`` (``data`` must then map names to tensors) or any other suffix
            (``torch.save``).
        data: what to write.
        verify: called with the temporary file's path (same suffix as ``path``) before the
            rename; if it raises, nothing is written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            # safetensors refuses views and shared storage: write independent contiguous copies.
            save_file({k: v.detach().contiguous().clone() for k, v in data.items()}, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        else:
            with open(tmp, "wb") as f:
                torch.save(data, f)
                f.flush()
                os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


# ------------------------------------------------------------------------ reference layout
@dataclass
class ConversionReport:
    """What :func:`convert_reference_state_dict` did with every key of the reference dict."""

    mapped: dict[str, str] = field(default_factory=dict)  # reference key -> our key
    dropped: dict[str, str] = field(default_factory=dict)  # reference key -> why
    unmapped: list[str] = field(default_factory=list)  # keys we do not know (not converted)
    absent: list[str] = field(default_factory=list)  # optional parts missing from the file
    teacher_from_student: bool = False  # the teacher was initialised from the student

    def summary(self) -> str:
        """One line: counts per part, dropped and unmapped keys."""
        parts = {}
        for ours in self.mapped.values():
            name = next(n for p, n in _PART_NAMES if ours.startswith(p))
            parts[name] = parts.get(name, 0) + 1
        counts = ", ".join(f"{n}: {c}" for n, c in parts.items())
        text = f"mapped {len(self.mapped)} tensors ({counts})"
        text += f"; dropped {len(self.dropped)}: {sorted(self.dropped)}"
        if self.teacher_from_student:
            text += "; teacher initialised from the student (no teacher in the file)"
        if self.absent:
            text += f"; absent from the file: {self.absent}"
        return text + f"; unmapped {len(self.unmapped)}: {self.unmapped}"

    def log(self, source: str) -> None:
        logger.info("Converted reference PixelCLIP checkpoint %s: %s", source, self.summary())
        if self.unmapped:
            logger.warning("%s: %d keys were not mapped and are ignored: %s", source,
                           len(self.unmapped), self.unmapped)  # fmt: skip


_PART_NAMES = (
    (STUDENT, "student image tower"),
    (TEACHER, "teacher image tower"),
    (TEXT, "text tower"),
    (PROMPTS, "prompts"),
    (DECODER, "decoder"),
)


def is_reference_state_dict(sd: Mapping[str, Tensor]) -> bool:
    """True if ``sd`` is in the reference implementation's layout (judged from its key names)."""
    return any(k.startswith((REF_CLIP, REF_TEACHER)) or k == REF_PROMPTS for k in sd)


def _is_text_key(name: str) -> bool:
    return any(name == t or name.startswith(t + ".") for t in TEXT_NAMES)


def _map_key(key: str) -> tuple[str | None, str | None]:
    """(our key, None), (None, reason it is dropped) or (None, None) for an unknown key."""
    if key == REF_PROMPTS:
        return PROMPTS, None
    if key.startswith(REF_CLIP + "visual."):
        return STUDENT + key[len(REF_CLIP + "visual.") :], None
    if key.startswith(REF_TEACHER + "visual."):
        return TEACHER + key[len(REF_TEACHER + "visual.") :], None
    if key.startswith(REF_DECODER):
        return DECODER + key[len(REF_DECODER) :], None
    if key.startswith(REF_CLIP):
        rest = key[len(REF_CLIP) :]
        if _is_text_key(rest):
            return TEXT + rest, None
        if rest == "logit_scale":
            return None, "CLIP's logit scale, unused by PixelCLIP"
    if key.startswith(REF_TEACHER):
        rest = key[len(REF_TEACHER) :]
        if _is_text_key(rest) or rest == "logit_scale":
            return None, "text-side leftover of the reference teacher copy"
    return None, None


def _incomplete_blocks(keys: set[str]) -> list[str]:
    """Names missing from transformer blocks: every block must hold what any block holds."""
    towers: dict[str, dict[int, set[str]]] = {}
    for key in keys:
        m = _BLOCK.match(key)
        if m:
            towers.setdefault(m.group(1), {}).setdefault(int(m.group(2)), set()).add(m.group(3))
    missing = []
    for prefix, blocks in towers.items():
        names = set().union(*blocks.values())
        for i in range(max(blocks) + 1):
            missing += [f"{prefix}{i}.{n}" for n in sorted(names - blocks.get(i, set()))]
    return missing


def fill_teacher_from_student(sd: dict[str, Tensor]) -> bool:
    """Copy the student image tower to the teacher's keys if ``sd`` has no teacher, in place.

    The reference initialises its teacher as a copy of the student; without a teacher in a file,
    the student is the best start for resuming training. Returns True if it copied anything.
    """
    if any(k.startswith(TEACHER) for k in sd):
        return False
    student = {k: v for k, v in sd.items() if k.startswith(STUDENT)}
    for k, v in student.items():
        sd[TEACHER + k[len(STUDENT) :]] = v.clone()
    return bool(student)


def convert_reference_state_dict(
    sd: Mapping[str, Tensor], *, source: str = "state dict", teacher_from_student: bool = True
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Convert a reference PixelCLIP state dict to our layout.

    Mapping (docs/REFERENCE_CHECKPOINT.md): ``sem_seg_head.predictor.clip_model.visual.*`` ->
    ``backbone.encoder.visual.*``; ``sem_seg_head.predictor.clip_model.{token_embedding,
    positional_embedding, transformer, ln_final, text_projection}*`` -> ``sem_seg_head.text.*``;
    ``sem_seg_head.predictor.prompt_tokens`` -> ``sem_seg_head.prompts.prompt_tokens``;
    ``head.*`` -> ``sem_seg_head.decoder.*``; ``teacher_encoder.visual.*`` ->
    ``teacher.encoder.visual.*``. Dropped: CLIP's ``logit_scale`` and the teacher's text-side
    leftovers. Any other key is reported as unmapped (and ignored). Tensors are not copied.

    Args:
        sd: the reference state dict (the ``"model"`` entry of a reference checkpoint).
        source: name of the file, for messages.
        teacher_from_student: without a teacher in ``sd``, copy the student to the teacher.

    Returns:
        (our state dict, report).

    Raises:
        ValueError: parts needed for inference (student image tower, text tower) are missing or
            incomplete, or the teacher's names/shapes differ from the student's; the message
            lists the missing keys.
    """
    ours: dict[str, Tensor] = {}
    report = ConversionReport()
    for key, value in sd.items():
        target, reason = _map_key(key)
        if target is not None:
            ours[target] = value
            report.mapped[key] = target
        elif reason is not None:
            report.dropped[key] = reason
        else:
            report.unmapped.append(key)
    report.unmapped.sort()

    student = {k[len(STUDENT) :] for k in ours if k.startswith(STUDENT)}
    teacher = {k[len(TEACHER) :] for k in ours if k.startswith(TEACHER)}
    text = {k[len(TEXT) :] for k in ours if k.startswith(TEXT)}
    missing = []
    if not student:
        missing.append(f"the whole student image tower ({REF_CLIP}visual.*)")
    elif "conv1.weight" in student or "class_embedding" in student:  # a ViT tower
        missing += [REF_CLIP + "visual." + n for n in REQUIRED_VIT if n not in student]
    if not text:
        missing.append(f"the whole text tower ({REF_CLIP}{{{', '.join(TEXT_NAMES)}}}*)")
    else:
        missing += [REF_CLIP + n for n in REQUIRED_TEXT if n not in text]
        if not any(n == "text_projection" or n.startswith("text_projection.") for n in text):
            missing.append(REF_CLIP + "text_projection")
        if not any(n.startswith("transformer.resblocks.") for n in text):
            missing.append(REF_CLIP + "transformer.resblocks.*")
    missing += [REF_CLIP + "visual." + n for n in _incomplete_blocks(student)]
    missing += [REF_CLIP + n for n in _incomplete_blocks(text)]
    if teacher:
        missing += [REF_TEACHER + "visual." + n for n in sorted(student - teacher)]
        missing += [REF_CLIP + "visual." + n for n in sorted(teacher - student)]
        shapes = [
            f"{n}: {tuple(ours[STUDENT + n].shape)} vs {tuple(ours[TEACHER + n].shape)}"
            for n in sorted(student & teacher)
            if ours[STUDENT + n].shape != ours[TEACHER + n].shape
        ]
        if shapes:
            raise ValueError(f"{source}: teacher and student shapes differ: {shapes[:8]}")
    if missing:
        raise ValueError(
            f"{source}: incomplete reference PixelCLIP checkpoint, {len(missing)} missing: "
            f"{_head(missing)}"
        )
    if not teacher:
        report.absent.append(f"teacher ({REF_TEACHER}visual.*)")
        if teacher_from_student:
            report.teacher_from_student = fill_teacher_from_student(ours)
    if PROMPTS not in ours:
        report.absent.append(f"prompts ({REF_PROMPTS})")
    if not any(k.startswith(DECODER) for k in ours):
        report.absent.append(f"decoder ({REF_DECODER}*)")
    return ours, report


def check_state_dict_matches(
    sd: Mapping[str, Tensor], expected: Mapping[str, Tensor], source: str
) -> None:
    """Strict key and shape check of ``sd`` against a model's ``state_dict()``.

    Raises:
        ValueError: naming the missing keys, unexpected keys and shape mismatches.
    """
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(sd) & set(expected))
        if sd[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source} does not match the model: {len(missing)} missing keys {_head(missing)}; "
            f"{len(unexpected)} unexpected keys {_head(unexpected)}; {len(shapes)} shape "
            f"mismatches {_head(shapes)}. Does the config (MODEL.CLIP.MODEL_NAME, "
            "MODEL.PROMPT.*, MODEL.PIXELCLIP.DECODER_CHANNELS) pair with this checkpoint?"
        )


def _head(items: list[str], n: int = 10) -> str:
    return str(items[:n])[:-1] + (f", ... ({len(items) - n} more)]" if len(items) > n else "]")


# ------------------------------------------------------------------------------ detectron2
class PixelCLIPCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that reads files safely and understands reference checkpoints.

    * ``.pth``/``.pt`` files are read with ``torch.load(weights_only=True)``, ``.safetensors``
      with safetensors; pickle-based formats that can run code (``.pkl``) are refused.
    * A checkpoint in the reference layout (detected from its keys) is converted with
      :func:`convert_reference_state_dict`, the report is logged, its optimizer/scheduler state
      (whose parameter order is the reference's) is dropped, and it must then match the model
      exactly (missing or unexpected keys are an error naming them).
    * A checkpoint with a student image tower but no teacher initialises the teacher from the
      student (logged).
    * :meth:`save` and :meth:`tag_last_checkpoint` write a temporary file, fsync it and rename it,
      and the ``last_checkpoint`` tag is only moved once the checkpoint is complete: a process
      killed while saving leaves the previous checkpoint tagged, and ``--resume`` uses it.

    Everything else behaves as in ``DetectionCheckpointer`` (which saves the model state dict --
    student, teacher, prompts, decoder -- and the trainer's iteration, optimizer, scheduler and
    AMP scaler).
    """

    _REFERENCE_FLAG = "__pixelclip_reference__"

    def _torch_load(self, f: str) -> dict:
        return read_checkpoint(f)

    def save(self, name: str, **kwargs) -> None:
        """Write ``<save_dir>/<name>.pth`` atomically, then tag it as the last checkpoint.

        Args:
            name: file name without ``.pth``.
            kwargs: extra entries saved in the file (as in fvcore's ``Checkpointer.save``).
        """
        if not self.save_dir or not self.save_to_disk:
            return
        if "://" in str(self.save_dir):  # a remote path_manager URI: no local rename available
            super().save(name, **kwargs)
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        self._remove_stale_temporaries()
        _write_atomically(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Point ``<save_dir>/last_checkpoint`` at ``last_filename_basename`` (atomically)."""
        if "://" in str(self.save_dir):
            super().tag_last_checkpoint(last_filename_basename)
            return
        _write_atomically(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename.encode()),
        )

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files left by a save that was killed (only this process saves)."""
        folder = Path(self.save_dir)
        for stale in [*folder.glob(".*.pth.*.tmp"), *folder.glob(".last_checkpoint.*.tmp")]:
            logger.info("Removing %s, left by an interrupted checkpoint save", stale)
            stale.unlink(missing_ok=True)

    def _load_file(self, filename: str) -> dict:
        if filename.endswith((".pkl", ".pyth")):
            raise ValueError(
                f"{filename}: pickle-based checkpoint formats are refused (loading them can run "
                "arbitrary code); use a .pth file of tensors or .safetensors"
            )
        if filename.endswith(".safetensors"):
            loaded = read_checkpoint(filename)
        else:
            loaded = super()._load_file(filename)  # query handling; reads via _torch_load
        sd = loaded["model"]
        if is_reference_state_dict(sd):
            ours, report = convert_reference_state_dict(sd, source=filename)
            report.log(filename)
            dropped = sorted(k for k in loaded if k not in ("model", "iteration"))
            if dropped:
                logger.info("%s: not loading the reference's %s", filename, dropped)
            converted = {"model": ours, self._REFERENCE_FLAG: True}
            if isinstance(loaded.get("iteration"), int):
                converted["iteration"] = loaded["iteration"]
            loaded = converted
        return loaded

    def _load_model(self, checkpoint: dict):
        reference = checkpoint.pop(self._REFERENCE_FLAG, False)
        sd, expected = checkpoint["model"], self.model.state_dict()
        if any(k.startswith(TEACHER) for k in expected) and fill_teacher_from_student(sd):
            logger.info("Checkpoint has no teacher: teacher initialised from the student")
        if reference:
            check_state_dict_matches(sd, expected, "reference checkpoint")
        return super()._load_model(checkpoint)


# ------------------------------------------------------------------------------ open_clip
def to_open_clip_state_dict(
    sd: Mapping[str, Tensor], *, teacher: bool = False, logit_scale: float | Tensor | None = None
) -> dict[str, Tensor]:
    """A plain open_clip ``CLIP`` state dict from our model's state dict.

    The image tower is the fine-tuned student (``backbone.encoder.visual.*``) or, with
    ``teacher``, the momentum teacher (``teacher.encoder.visual.*``), under ``visual.*``; the
    frozen text tower ``sem_seg_head.text.*`` goes to open_clip's top-level text names.

    Args:
        sd: our state dict.
        teacher: export the teacher's image tower instead of the student's.
        logit_scale: open_clip's ``logit_scale`` (log of the softmax scale; PixelCLIP does not
            keep it). None: :data:`DEFAULT_LOGIT_SCALE` = ln(100), the value of OpenAI's CLIP.

    Returns:
        Name -> tensor, loadable by ``open_clip.create_model(name, pretrained=file)``.

    Raises:
        ValueError: the image or text tower is missing from ``sd``.
    """
    prefix = TEACHER if teacher else STUDENT
    out = {"visual." + k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"no {'teacher' if teacher else 'student'} image tower ({prefix}*) in "
                         "the checkpoint")  # fmt: skip
    text = {k[len(TEXT) :]: v for k, v in sd.items() if k.startswith(TEXT)}
    if not text:
        raise ValueError(f"no text tower ({TEXT}*) in the checkpoint")
    out.update(text)
    scale = DEFAULT_LOGIT_SCALE if logit_scale is None else logit_scale
    out["logit_scale"] = torch.as_tensor(scale, dtype=torch.float32).reshape(()).clone()
    return out
