"""Our state dict back to a plain open_clip CLIP state dict (for other CLIP-based code), with the
logit scale to store and a strict check that open_clip loads the result
(``tools/export_clip.py``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor

from .reference import DEFAULT_LOGIT_SCALE, REF_CLIP, STUDENT, TEACHER, TEXT

logger = logging.getLogger(__name__)


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


def resolve_logit_scale(
    raw: Mapping[str, Tensor], logit_scale: float | None = None, base_weights: str = ""
) -> float:
    """The open_clip ``logit_scale`` to store with an export (PixelCLIP does not keep it).

    In order of precedence: ``logit_scale``; the one in ``base_weights`` (the open_clip weight
    file training started from); the one stored in a reference checkpoint ``raw``; else
    :data:`DEFAULT_LOGIT_SCALE` = ln(100), the value of OpenAI's CLIP, with a warning.
    """
    if logit_scale is not None:
        return logit_scale
    if base_weights:
        from ..modeling.clip import load_state_dict_file

        base = load_state_dict_file(base_weights)
        if "logit_scale" not in base:
            raise ValueError(f"{base_weights}: no 'logit_scale' in these CLIP weights")
        return float(base["logit_scale"])
    if REF_CLIP + "logit_scale" in raw:
        return float(raw[REF_CLIP + "logit_scale"])
    logger.warning(
        "logit_scale is not stored by PixelCLIP: using ln(100) = %.4f (OpenAI CLIP's value); "
        "pass --base-weights or --logit-scale to set it",
        DEFAULT_LOGIT_SCALE,
    )
    return DEFAULT_LOGIT_SCALE


def open_clip_verifier(model_name: str, model_config: str, force_quick_gelu: bool):
    """A function that loads a written file into a fresh open_clip model the way
    ``open_clip.create_model(model_name, pretrained=file)`` does (strict)."""
    import open_clip

    from ..modeling.clip import create_clip

    model = create_clip(model_name, model_config=model_config, force_quick_gelu=force_quick_gelu)

    def verify(path: str) -> None:
        try:
            open_clip.load_checkpoint(model, path, strict=True)
        except RuntimeError as e:  # load_state_dict's missing/unexpected/size-mismatch report
            raise ValueError(f"open_clip cannot load the export into {model_name!r}: {e}") from e

    return verify
