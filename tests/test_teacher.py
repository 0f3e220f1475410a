"""Momentum teacher (docs/METHOD.md §6): EMA formula, eval mode, no gradients."""

import torch
from conftest import assert_close_to_float64
from torch import nn

from pixelclip.modeling.dense import build_dense_encoder
from pixelclip.modeling.teacher import MomentumTeacher


def test_ema_update_matches_hand_computation(tiny_vit):
    student = build_dense_encoder(tiny_vit.visual)
    teacher = MomentumTeacher(student, momentum=0.9)
    before = {n: p.detach().clone() for n, p in teacher.encoder.named_parameters()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    teacher.update(student)
    for name, p in student.named_parameters():
        t = dict(teacher.encoder.named_parameters())[name]
        expected = 0.9 * before[name] + 0.1 * p.detach()
        expected64 = 0.9 * before[name].double() + 0.1 * p.detach().double()
        assert_close_to_float64(t, expected64, expected, msg=name)
        # bit for bit the reference's in-place order of operations (rounding included)
        assert torch.equal(t, before[name].clone().mul_(0.9).add_(p.detach(), alpha=0.1)), name
        assert t.dtype == torch.float32 and not t.requires_grad
    # The student is untouched and does not share storage with the teacher.
    assert all(
        p.data_ptr() != t.data_ptr()
        for p, t in zip(student.parameters(), teacher.encoder.parameters(), strict=True)
    )


def test_first_update_with_equal_weights_keeps_them_and_copies_buffers(tiny_convnext):
    student = build_dense_encoder(tiny_convnext.visual)
    teacher = MomentumTeacher(student)  # gamma = 0.999
    student.register_buffer("steps", torch.tensor(0.0))
    teacher.encoder.register_buffer("steps", torch.tensor(0.0))
    student.steps.fill_(7.0)
    teacher.update(student)
    assert teacher.encoder.steps.item() == 7.0
    for p, t in zip(student.parameters(), teacher.encoder.parameters(), strict=True):
        # 0.999 p + 0.001 p: two products and a sum, each rounded once
        assert_close_to_float64(t, p.detach().double(), terms=3)


class _Parent(nn.Module):
    def __init__(self, student):
        super().__init__()
        self.student = student
        self.teacher = MomentumTeacher(student)


def test_teacher_stays_in_eval_without_grad_and_keys(tiny_convnext):
    student = build_dense_encoder(tiny_convnext.visual)  # has DropPath (drop_path 0.1)
    parent = _Parent(student).train()
    assert student.training and not parent.teacher.training
    assert not any(m.training for m in parent.teacher.modules())
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out1, out2 = parent.teacher(images), parent.teacher(images)
    assert torch.equal(out1, out2)  # no stochastic depth
    assert out1.grad_fn is None and not out1.requires_grad
    with torch.no_grad():
        expected = student.eval()(images)
    torch.testing.assert_close(out1, expected)
    assert all(k.startswith("encoder.visual.") for k in parent.teacher.state_dict())
    assert all(not p.requires_grad for p in parent.teacher.parameters())


def test_bad_momentum(tiny_vit):
    import pytest

    with pytest.raises(ValueError, match="momentum must be in"):
        MomentumTeacher(build_dense_encoder(tiny_vit.visual), momentum=1.5)
