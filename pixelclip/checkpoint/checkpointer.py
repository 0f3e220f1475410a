"""detectron2's checkpointer, made safe, strict and atomic."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .reference import (
    TEACHER,
    check_state_dict_matches,
    convert_reference_state_dict,
    fill_teacher_from_student,
    is_reference_state_dict,
    state_dict_mismatches,
)
from .safe_io import check_local_file, is_finite_weight, read_checkpoint, write_atomically

logger = logging.getLogger(__name__)


class PixelCLIPCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that reads files safely and strictly and writes them atomically.

    * Every file is read by :func:`~pixelclip.checkpoint.safe_io.read_checkpoint`: local files
      only, tensors only (``weights_only=True``, or safetensors), zip checksums verified, no NaN
      or Inf; URLs, ``?query`` suffixes and pickle formats (``.pkl``...) are refused before any
      download or unpickling detectron2 would do.
    * A checkpoint in the reference implementation's layout (detected from its keys) is converted
      with :func:`~pixelclip.checkpoint.reference.convert_reference_state_dict`, the report is
      logged and its optimizer/scheduler state (whose parameter order is the reference's) is
      dropped.
    * A checkpoint with a student image tower but no teacher initialises the teacher from the
      student (logged).
    * Loading is strict: missing, unexpected, mis-shaped or wrongly typed tensors are an error
      naming the file and the first keys. ``allow_partial=True`` (``MODEL.PIXELCLIP.
      ALLOW_PARTIAL_WEIGHTS``, for fine-tuning from another setup) loads what matches and logs
      every skipped key as a warning.
    * :meth:`save` refuses a model with non-finite weights (nothing is written or tagged), and
      :meth:`save` / :meth:`tag_last_checkpoint` write a temporary file, fsync it and rename it;
      the ``last_checkpoint`` tag moves only once the checkpoint is complete.
    * ``--resume`` (:meth:`resume_or_load`) falls back to the newest readable checkpoint, with a
      warning, if ``last_checkpoint`` names a missing or damaged file.

    Everything else behaves as in ``DetectionCheckpointer`` (which saves the model state dict --
    student, teacher, prompts, decoder -- and the trainer's iteration, optimizer, scheduler and
    AMP scaler).
    """

    _REFERENCE_FLAG = "__pixelclip_reference__"

    def __init__(self, model, save_dir: str = "", *, allow_partial: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.allow_partial = allow_partial
        self._already_read: tuple[str, dict] | None = None  # (path, content) read to choose it

    # ------------------------------------------------------------------------------- reading
    def load(self, path: str, *args, **kwargs):
        """Load ``path`` (see the class docstring); "" loads nothing."""
        if path:
            path = check_local_file(path, "checkpoint")
            logger.info("Loading checkpoint %s", os.path.abspath(path))
        return super().load(path, *args, **kwargs)

    def _torch_load(self, f: str) -> dict:
        return read_checkpoint(f)

    def _read(self, filename: str) -> dict:
        """``read_checkpoint(filename)``, or the content :meth:`resumable_checkpoint` already read
        (a multi-GB file is then read once)."""
        if self._already_read is not None and self._already_read[0] == filename:
            loaded, self._already_read = self._already_read[1], None
            return loaded
        return read_checkpoint(filename)

    def _load_file(self, filename: str) -> dict:
        loaded = self._read(filename)
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
        loaded["__source__"] = filename
        return loaded

    def _load_model(self, checkpoint: dict):
        checkpoint.pop(self._REFERENCE_FLAG, False)
        source = checkpoint.pop("__source__", "checkpoint")
        sd, expected = checkpoint["model"], self.model.state_dict()
        unused = [k for k in sd if k.startswith(TRAINING_ONLY_PREFIXES) and k not in expected]
        if unused:
            logger.info("%s: %d tensors of training-only parts not loaded (%s...)", source,
                        len(unused), unused[0])  # fmt: skip
            for key in unused:
                del sd[key]
        if any(k.startswith(TEACHER) for k in expected) and fill_teacher_from_student(sd):
            logger.info("%s has no teacher: teacher initialised from the student", source)
        if not self.allow_partial:
            check_state_dict_matches(sd, expected, source)
        else:
            missing, unexpected, wrong = state_dict_mismatches(sd, expected)
            for what, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("skipped", wrong),
            ):
                if keys:
                    logger.warning("PARTIAL LOAD of %s: %d %s keys: %s", source, len(keys), what,
                                   keys)  # fmt: skip
            for item in wrong:
                sd.pop(item.split(":", 1)[0])
        return super()._load_model(checkpoint)

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict:
        """Resume from the last complete checkpoint of ``save_dir`` if ``resume`` and one exists,
        else load ``path`` (model only)."""
        if resume and self.has_checkpoint():
            return self.load(self.resumable_checkpoint())
        return self.load(path, checkpointables=[])

    def resumable_checkpoint(self) -> str:
        """The tagged checkpoint, or the newest readable one if the tag names a bad file."""
        tagged = self.get_checkpoint_file()
        try:
            self._already_read = (tagged, read_checkpoint(tagged))
            return tagged
        except (OSError, ValueError) as e:
            problem = e
        others = [p for p in self.get_all_checkpoint_files() if p != tagged]
        others.sort(key=lambda p: os.path.getmtime(p), reverse=True)
        for candidate in others:
            try:
                self._already_read = (candidate, read_checkpoint(candidate))
            except (OSError, ValueError):
                continue
            logger.warning(
                "last_checkpoint names %s, which cannot be used (%s); resuming from %s, the "
                "newest complete checkpoint", tagged, problem, candidate,
            )  # fmt: skip
            return candidate
        raise ValueError(
            f"--resume: {self.save_dir}: last_checkpoint names {tagged}, which cannot be used "
            f"({problem}), and no other checkpoint there is readable"
        )

    # ------------------------------------------------------------------------------- writing
    def save(self, name: str, **kwargs) -> None:
        """Write ``<save_dir>/<name>.pth`` atomically, then tag it as the last checkpoint.

        Args:
            name: file name without ``.pth``.
            kwargs: extra entries saved in the file (as in fvcore's ``Checkpointer.save``).

        Raises:
            FloatingPointError: the model has NaN or Inf weights (nothing is written).
        """
        if not self.save_dir or not self.save_to_disk:
            return
        state = self.model.state_dict()
        bad = [k for k, v in state.items() if not is_finite_weight(k, v)]
        if bad:
            raise FloatingPointError(f"not saving checkpoint {name!r}: {len(bad)} model tensors "
                                     f"hold NaN or Inf (first: {bad[:5]}); the previous checkpoint "
                                     "stays the resume point")  # fmt: skip
        data = {"model": state}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        self._remove_stale_temporaries()
        write_atomically(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Point ``<save_dir>/last_checkpoint`` at ``last_filename_basename`` (atomically)."""
        write_atomically(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename.encode()),
        )

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files left by a save that was killed (only this process saves)."""
        folder = Path(self.save_dir)
        for stale in [*folder.glob(".*.pth.*.tmp*"), *folder.glob(".last_checkpoint.*.tmp")]:
            logger.info("Removing %s, left by an interrupted checkpoint save", stale)
            stale.unlink(missing_ok=True)


# Training-only parts a checkpoint may hold that an inference model does not build.
TRAINING_ONLY_PREFIXES = ("mask_generator.",)


def load_weights(model, path: str, *, allow_partial: bool = False) -> None:
    """Load a PixelCLIP checkpoint (ours or the reference layout) into ``model``: the one way
    every entry point (train_net, evaluate_all, Predictor, demo, export) loads weights."""
    PixelCLIPCheckpointer(model, allow_partial=allow_partial).load(path, checkpointables=[])


def build_model_from_checkpoint(cfg, weights: str):
    """The model of ``cfg`` with every tensor from ``weights``, needing no other file.

    A checkpoint holds both CLIP towers, the prompts, the decoder and the teacher, so the model is
    built without reading ``MODEL.CLIP.PRETRAINED`` (the pre-trained CLIP file of the training
    machine need not exist here) and without the training-only DINO mask generator; the strict
    load then guarantees that nothing is left at its random initial value.

    Args:
        cfg: the run's config (not modified).
        weights: the checkpoint.

    Returns:
        The model in eval mode.
    """
    from detectron2.modeling import build_model

    check_local_file(weights, "checkpoint")  # before the (slow) build
    cfg = cfg.clone()
    cfg.defrost()
    if cfg.MODEL.CLIP.PRETRAINED:
        logger.info("Weights come from %s: MODEL.CLIP.PRETRAINED (%s) is not read", weights,
                    cfg.MODEL.CLIP.PRETRAINED)  # fmt: skip
    cfg.MODEL.CLIP.PRETRAINED = ""
    cfg.INPUT.MASK_SOURCE = "sa1b"  # masks are a training input
    cfg.freeze()
    with torch.random.fork_rng():  # the throw-away random init leaves the caller's RNG alone
        model = build_model(cfg)
    load_weights(model, weights, allow_partial=cfg.MODEL.PIXELCLIP.ALLOW_PARTIAL_WEIGHTS)
    return model.eval()
