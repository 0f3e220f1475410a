"""Momentum (EMA) teacher of the CLIP image tower (docs/METHOD.md §6)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .dense import DenseCLIPEncoder

__all__ = ["MomentumTeacher"]


class MomentumTeacher(nn.Module):
    """A frozen copy of the dense image encoder, updated as an exponential moving average.

    The teacher always runs in eval mode (no dropout, no stochastic depth), whatever mode its
    parent model is in, and never builds an autograd graph. Its state-dict keys are
    ``encoder.visual.<open_clip names>``. Only the image tower is copied (no text tower).

    Args:
        encoder: the student's dense encoder at initialisation (pre-trained weights).
        momentum: gamma in theta_t <- gamma * theta_t + (1 - gamma) * theta_s, in [0, 1].
    """

    def __init__(self, encoder: DenseCLIPEncoder, momentum: float = 0.999) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.encoder = copy.deepcopy(encoder)
        self.encoder.requires_grad_(False)
        # Nothing to recompute without gradients (the student's setting is copied otherwise).
        if hasattr(self.encoder.visual, "set_grad_checkpointing"):
            self.encoder.visual.set_grad_checkpointing(False)
        self.train(False)

    def train(self, mode: bool = True) -> MomentumTeacher:
        """Ignore ``mode``: the teacher stays in eval mode (the parent's .train() reaches here)."""
        return super().train(False)

    @torch.no_grad()
    def update(self, student: DenseCLIPEncoder) -> None:
        """theta_t <- m * theta_t + (1 - m) * theta_s over all parameters, in place; copy buffers.

        Args:
            student: the student's dense encoder (same architecture).
        """
        teacher_params = dict(self.encoder.named_parameters())
        student_params = dict(student.named_parameters())
        if teacher_params.keys() != student_params.keys():
            diff = sorted(teacher_params.keys() ^ student_params.keys())[:8]
            raise ValueError(f"student and teacher encoders differ in parameters, e.g. {diff}")
        teacher_list = list(teacher_params.values())
        student_list = [
            student_params[name].detach().to(device=t.device, dtype=t.dtype)
            for name, t in teacher_params.items()
        ]
        # m * t + (1 - m) * s with the reference's order of operations (so a teacher copy of a
        # frozen student tensor drifts by rounding exactly as in the reference, METHOD §6), as
        # two multi-tensor ops instead of a Python loop over tensors.
        torch._foreach_mul_(teacher_list, self.momentum)
        torch._foreach_add_(teacher_list, student_list, alpha=1.0 - self.momentum)
        student_buffers = dict(student.named_buffers())
        for name, buf in self.encoder.named_buffers():
            buf.copy_(student_buffers[name])

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Teacher dense features, (B, 3, H, W) -> (B, D, H / stride, W / stride), no grad."""
        return self.encoder(images)
