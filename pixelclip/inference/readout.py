"""Test-time readouts around a PixelCLIP model: the training-free protocol's and PAMR.

:class:`ReadoutModel` wraps a PixelCLIP model (or one in DistributedDataParallel) for detectron2's
``inference_on_dataset``. It leaves the model untouched and works on its outputs:

1. **Queries.** With ``readout="training_free"`` every name of a class is its own query
   (:func:`~pixelclip.inference.training_free.names_as_queries`): the model is given the query
   list as its vocabulary, so each name gets its own template-averaged embedding, and it returns
   one cosine map per query at the original image size. With ``readout="cosine"`` the classes
   are the vocabulary as they are (synonyms averaged, docs/METHOD.md §9.1).
2. **PAMR** (``pamr_steps`` > 0, :func:`~pixelclip.inference.pamr.pamr`) refines those maps with
   the affinities of the test image, resized bilinearly to the original size (the image the
   model saw, as NACLIP's ``naclip.py`` does before its post-processing).
3. **Readout.** "cosine": the maps are the output (the evaluator takes the argmax). "training_free":
   ``softmax(logit_scale * cosine)`` over all queries, a class scored by its best name
   (:func:`~pixelclip.inference.training_free.class_probabilities`).
4. **Background.** With ``prob_threshold`` > 0 and a background class (``background`` = its
   index), a pixel whose best class score is below the threshold is background: its background
   channel is set to 1 (above every probability), so the evaluator's argmax is exactly
   :func:`~pixelclip.inference.training_free.predict_with_background`.

``"sem_seg"`` is therefore (C, H, W) per image, the C classes of the benchmark, as the evaluator
expects.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from torch import nn

from .pamr import pamr
from .training_free import class_probabilities, names_as_queries

logger = logging.getLogger(__name__)

__all__ = ["READOUTS", "ReadoutModel", "ReadoutSettings", "readout_settings"]

READOUTS = ("cosine", "training_free")


@dataclass(frozen=True)
class ReadoutSettings:
    """How scores become the evaluated prediction (see the module docstring).

    Attributes:
        readout: "cosine" or "training_free".
        logit_scale: multiplier of the cosines before the softmax ("training_free").
        prob_threshold: background threshold (0 = off).
        pamr_steps: PAMR steps (0 = off).
        pamr_dilations: PAMR dilations in pixels.
    """

    readout: str = "cosine"
    logit_scale: float = 40.0
    prob_threshold: float = 0.0
    pamr_steps: int = 0
    pamr_dilations: tuple[int, ...] = field(default=(8, 16))

    def __post_init__(self) -> None:
        prefix = "MODEL.PIXELCLIP.TEST."
        if self.readout not in READOUTS:
            raise ValueError(f"{prefix}READOUT {self.readout!r}: choose from {list(READOUTS)}")
        if not self.logit_scale > 0:
            raise ValueError(f"{prefix}LOGIT_SCALE {self.logit_scale!r}: expected a number > 0")
        if not 0 <= self.prob_threshold <= 1:
            raise ValueError(
                f"{prefix}PROB_THRESHOLD {self.prob_threshold!r}: expected a probability in [0, 1]"
            )
        if self.prob_threshold > 0 and self.readout != "training_free":
            raise ValueError(
                f"{prefix}PROB_THRESHOLD {self.prob_threshold}: a probability threshold needs "
                f'READOUT "training_free" (the "cosine" readout has no probabilities)'
            )
        if int(self.pamr_steps) != self.pamr_steps or self.pamr_steps < 0:
            raise ValueError(f"{prefix}PAMR_STEPS {self.pamr_steps!r}: expected an integer >= 0")
        if not self.pamr_dilations or any(int(d) != d or d < 1 for d in self.pamr_dilations):
            raise ValueError(
                f"{prefix}PAMR_DILATIONS {list(self.pamr_dilations)!r}: expected a non-empty list "
                "of integers >= 1"
            )

    @property
    def is_plain(self) -> bool:
        """True when the model's own output is the prediction (nothing to wrap)."""
        return self.readout == "cosine" and self.pamr_steps == 0

    def as_record(self) -> dict:
        """JSON-able description for results files."""
        return {
            "readout": self.readout,
            "logit_scale": self.logit_scale if self.readout == "training_free" else None,
            "prob_threshold": self.prob_threshold,
            "pamr": {"steps": int(self.pamr_steps), "dilations": list(self.pamr_dilations)}
            if self.pamr_steps
            else None,
        }


def readout_settings(cfg: CfgNode, prob_threshold: float | None = None) -> ReadoutSettings:
    """The readout of a config's ``MODEL.PIXELCLIP.TEST`` keys (``prob_threshold`` replaces
    PROB_THRESHOLD, e.g. a preset's value for one benchmark)."""
    test = cfg.MODEL.PIXELCLIP.TEST
    return ReadoutSettings(
        readout=str(test.READOUT),
        logit_scale=float(test.LOGIT_SCALE),
        prob_threshold=float(test.PROB_THRESHOLD if prob_threshold is None else prob_threshold),
        pamr_steps=int(test.PAMR_STEPS),
        pamr_dilations=tuple(int(d) for d in test.PAMR_DILATIONS),
    )


def _inner(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class ReadoutModel(nn.Module):
    """A PixelCLIP model with the readout of :class:`ReadoutSettings` (module docstring).

    Args:
        model: the PixelCLIP model (possibly in DistributedDataParallel), in eval mode.
        class_names: the benchmark's classes, one entry per class ("a, b" = names a and b).
        settings: the readout.
        background: index of the background class, or None (the threshold is then not used).
    """

    def __init__(
        self,
        model: nn.Module,
        class_names: Sequence[str],
        settings: ReadoutSettings,
        background: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.settings = settings
        self.class_names = list(class_names)
        self.background = background
        if settings.readout == "training_free":
            self.queries, self.query_class = names_as_queries(self.class_names)
        else:
            self.queries, self.query_class = self.class_names, None
        if settings.prob_threshold > 0 and background is None:
            logger.warning(
                "background threshold %s given, but the classes have no background class: not used",
                settings.prob_threshold,
            )

    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        inner = _inner(self.model)
        vocabulary = inner.vocabulary
        inner.vocabulary = list(self.queries)  # embedded (and cached) by the model's head
        try:
            outputs = self.model(batched_inputs)
        finally:
            inner.vocabulary = vocabulary
        return [self._read(x, out["sem_seg"]) for x, out in zip(batched_inputs, outputs)]

    @torch.no_grad()
    def _read(self, x: dict, scores: torch.Tensor) -> dict:
        s = self.settings
        if s.pamr_steps:
            image = x["image"].to(scores.device).float()[None]
            if tuple(image.shape[-2:]) != tuple(scores.shape[-2:]):
                image = F.interpolate(
                    image, size=scores.shape[-2:], mode="bilinear", align_corners=False
                )
            scores = pamr(image, scores[None].float(), s.pamr_steps, s.pamr_dilations)[0]
        if s.readout == "cosine":
            return {"sem_seg": scores}
        probs = class_probabilities(scores, self.query_class, s.logit_scale)
        if s.prob_threshold > 0 and self.background is not None:
            below = probs.max(dim=0).values < s.prob_threshold
            probs[self.background] = torch.where(
                below, torch.ones_like(probs[self.background]), probs[self.background]
            )
        return {"sem_seg": probs}
