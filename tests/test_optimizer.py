"""Parameter groups (LR multipliers, weight-decay exceptions) and full-model gradient clipping."""

import copy

import pytest
import torch
from conftest import assert_close_to_float64
from detectron2.config import get_cfg
from torch import nn

from pixelclip.config import add_pixelclip_config
from pixelclip.solver import build_optimizer


class Prompts(nn.Module):
    def __init__(self):
        super().__init__()
        self.prompt_tokens = nn.Parameter(torch.zeros(3, 2, 4))


class ToyModel(nn.Module):
    """Names shaped like PixelCLIP's: backbone / sem_seg_head.{prompts,decoder,text} / teacher."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.proj = nn.Linear(4, 4)
        self.backbone.ln = nn.LayerNorm(4)
        self.backbone.positional_embedding = nn.Parameter(torch.zeros(5, 4))
        self.backbone.frozen = nn.Linear(4, 4).requires_grad_(False)
        self.sem_seg_head = nn.Module()
        self.sem_seg_head.prompts = Prompts()
        self.sem_seg_head.decoder = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4))
        self.sem_seg_head.text = nn.Embedding(10, 4).requires_grad_(False)
        self.sem_seg_head.extra_embedding = nn.Embedding(10, 4)
        self.teacher = nn.Linear(4, 4).requires_grad_(False)


def _cfg(**solver):
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    cfg.SOLVER.BASE_LR = 2e-4
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True  # as in configs/Base-PixelCLIP.yaml
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.01
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def _settings(optimizer):
    return {
        name: (group["lr"], group["weight_decay"])
        for group in optimizer.param_groups
        for name in group["names"]
    }


def test_groups_follow_the_recipe():
    optimizer = build_optimizer(_cfg(), ToyModel())
    assert isinstance(optimizer, torch.optim.AdamW)
    got = _settings(optimizer)
    clip, prompt, base = 2e-4 * 0.01, 2e-4 * 10, 2e-4
    expected = {
        "backbone.proj.weight": (clip, 1e-4),
        "backbone.proj.bias": (clip, 1e-4),
        "backbone.ln.weight": (clip, 0.0),
        "backbone.ln.bias": (clip, 0.0),
        "backbone.positional_embedding": (clip, 1e-4),
        "sem_seg_head.prompts.prompt_tokens": (prompt, 1e-4),
        "sem_seg_head.decoder.0.weight": (base, 1e-4),
        "sem_seg_head.decoder.0.bias": (base, 1e-4),
        "sem_seg_head.decoder.1.weight": (base, 0.0),
        "sem_seg_head.decoder.1.bias": (base, 0.0),
        "sem_seg_head.extra_embedding.weight": (base, 0.0),
    }
    assert set(got) == set(expected)  # frozen text tower, frozen backbone part, teacher: left out
    for name, (lr, wd) in expected.items():
        assert got[name][0] == pytest.approx(lr) and got[name][1] == wd, name


def test_full_model_clipping_bounds_the_total_update():
    torch.manual_seed(0)
    model = ToyModel()
    cfg = _cfg(OPTIMIZER="SGD", BASE_LR=1.0, WEIGHT_DECAY=0.0, MOMENTUM=0.0)
    cfg.SOLVER.CLIP_MULTIPLIER = cfg.SOLVER.PROMPT_MULTIPLIER = 1.0
    optimizer = build_optimizer(cfg, model)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.randn_like(p) * 100
    grads = [p.grad.clone() for p in params]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    total64 = torch.linalg.vector_norm(torch.cat([g.double().flatten() for g in grads]))
    optimizer.step()
    for p, b, g in zip(params, before, grads):
        # SGD with lr 1: the update is the gradient scaled so that the whole model's norm is
        # 0.01. Compared on the parameters (the difference b - p would cancel their digits).
        expected = b - g * (0.01 / total)
        expected64 = b.double() - g.double() * (0.01 / total64)
        assert_close_to_float64(p, expected64, expected)


def test_no_clipping_when_disabled():
    model = ToyModel()
    cfg = _cfg(OPTIMIZER="SGD", BASE_LR=1.0, WEIGHT_DECAY=0.0, MOMENTUM=0.0)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    cfg.SOLVER.CLIP_MULTIPLIER = 1.0
    optimizer = build_optimizer(cfg, model)
    p = model.backbone.proj.weight
    before = p.detach().clone()
    p.grad = torch.full_like(p, 5.0)
    optimizer.step()
    torch.testing.assert_close(before - p.detach(), torch.full_like(p, 5.0))


def test_bad_solver_settings_are_named():
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(_cfg(OPTIMIZER="LAMB"), ToyModel())
    cfg = _cfg()
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
    with pytest.raises(ValueError, match="CLIP_TYPE"):
        build_optimizer(cfg, ToyModel())
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        build_optimizer(_cfg(), frozen)


def test_adamw_is_fused_and_steps_like_the_per_tensor_loop():
    torch.manual_seed(0)
    model, reference_model = ToyModel(), ToyModel()
    reference_model.load_state_dict(model.state_dict())
    reference_model64 = copy.deepcopy(reference_model).double()
    optimizer = build_optimizer(_cfg(), model)
    assert optimizer.defaults["fused"] is True

    def plain_adamw(model):
        """The same groups through torch's plain (for-loop) AdamW."""
        return torch.optim.AdamW(
            [
                {"params": [dict(model.named_parameters())[n] for n in g["names"]]}
                | {k: g[k] for k in ("lr", "weight_decay")}
                for g in optimizer.param_groups
            ],
            foreach=False,
        )

    references = [plain_adamw(m) for m in (reference_model, reference_model64)]
    for _ in range(3):
        grads = {n: torch.randn_like(p) for n, p in model.named_parameters() if p.requires_grad}
        for m in (model, reference_model, reference_model64):
            for n, p in m.named_parameters():
                p.grad = grads[n].to(p.dtype, copy=True) if n in grads else None
        optimizer.step()
        for reference in references:  # with the same full-model clipping
            params = [p for g in reference.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, 0.01)
            reference.step()
    for (name, p), q, q64 in zip(
        model.named_parameters(), reference_model.parameters(), reference_model64.parameters()
    ):
        assert_close_to_float64(p, q64, q, msg=name)
