"""Our state dict back to a plain open_clip CLIP state dict (for other CLIP-based code)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .reference import DEFAULT_LOGIT_SCALE, STUDENT, TEACHER, TEXT


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
