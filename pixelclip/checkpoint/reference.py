"""The reference implementation's checkpoint layout, and conversion into ours.

:func:`is_reference_state_dict` / :func:`convert_reference_state_dict` recognise and convert the
state dict of the authors' PixelCLIP code (github.com/cvlab-kaist/PixelCLIP; its layout is
described in docs/REFERENCE_CHECKPOINT.md) into ours, reporting every key they drop or cannot map.
:func:`check_state_dict_matches` is the strict key / shape / dtype check every load goes through.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

from .safe_io import abbreviated

logger = logging.getLogger(__name__)


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
            f"{abbreviated(missing)}"
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


def state_dict_mismatches(
    sd: Mapping[str, Tensor], expected: Mapping[str, Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """(missing keys, unexpected keys, "key: why" for tensors of the wrong shape or kind).

    The kind is floating point vs integer / bool: an integer tensor where the model has a float
    parameter (or the reverse) is as wrong as a wrong shape. Floating dtypes may differ (a bf16
    file loads into an fp32 model).
    """
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = []
    for k in sorted(set(sd) & set(expected)):
        got, want = sd[k], expected[k]
        if got.shape != want.shape:
            wrong.append(f"{k}: file {tuple(got.shape)} vs model {tuple(want.shape)}")
        elif got.is_floating_point() != want.is_floating_point() or got.is_complex():
            wrong.append(f"{k}: file dtype {got.dtype} vs model {want.dtype}")
    return missing, unexpected, wrong


def check_state_dict_matches(
    sd: Mapping[str, Tensor], expected: Mapping[str, Tensor], source: str
) -> None:
    """Strict check of ``sd`` against a model's ``state_dict()``: keys, shapes, tensor kinds.

    Raises:
        ValueError: naming the source, the missing and unexpected keys and the wrong tensors.
    """
    missing, unexpected, wrong = state_dict_mismatches(sd, expected)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source} does not match the model: {len(missing)} missing keys "
            f"{abbreviated(missing)}; {len(unexpected)} unexpected keys "
            f"{abbreviated(unexpected)}; {len(wrong)} tensors of the wrong shape or dtype "
            f"{abbreviated(wrong)}. Does the config (MODEL.CLIP.MODEL_NAME, "
            "MODEL.PROMPT.*, MODEL.PIXELCLIP.DECODER_CHANNELS) pair with this checkpoint?"
        )
