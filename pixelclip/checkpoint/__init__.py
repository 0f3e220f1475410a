"""Checkpoints in and out, split by concern.

* :mod:`.safe_io`: the one reading path for every weight file and config (tensors only, no Python
  tags, checksums, strict formats) and atomic writing.
* :mod:`.reference`: the reference implementation's layout and its conversion; strict state-dict
  checks.
* :mod:`.checkpointer`: detectron2's checkpointer built on both (train_net, ``--resume``,
  evaluation, the predictor), and :func:`load_weights`.
* :mod:`.open_clip_export`: our state dict back to a plain open_clip CLIP.
"""

from .checkpointer import PixelCLIPCheckpointer, build_model_from_checkpoint, load_weights
from .open_clip_export import to_open_clip_state_dict
from .reference import (
    DEFAULT_LOGIT_SCALE,
    REF_CLIP,
    ConversionReport,
    check_state_dict_matches,
    convert_reference_state_dict,
    fill_teacher_from_student,
    is_reference_state_dict,
    state_dict_mismatches,
)
from .safe_io import (
    atomic_save,
    check_local_file,
    merge_config_file,
    read_checkpoint,
    read_config_dict,
    read_tensor_file,
    write_atomically,
)

__all__ = [
    "DEFAULT_LOGIT_SCALE",
    "REF_CLIP",
    "ConversionReport",
    "PixelCLIPCheckpointer",
    "atomic_save",
    "build_model_from_checkpoint",
    "check_local_file",
    "check_state_dict_matches",
    "convert_reference_state_dict",
    "fill_teacher_from_student",
    "is_reference_state_dict",
    "load_weights",
    "merge_config_file",
    "read_checkpoint",
    "read_config_dict",
    "read_tensor_file",
    "state_dict_mismatches",
    "to_open_clip_state_dict",
    "write_atomically",
]
