"""Optimizer for PixelCLIP: parameter groups with LR multipliers and full-model gradient clipping.

Recipe (docs/METHOD.md §7): AdamW with base LR 2e-4 and weight decay 1e-4; the image encoder trains
at LR x0.01, the learnable prompts at x10, the decoder at x1; no weight decay on the parameters of
normalisation layers and of ``nn.Embedding`` modules (bare parameters such as the positional
embedding and the prompt tokens keep it); before each step the L2 norm of the gradients of the
whole model is clipped to 0.01.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
from torch import nn

logger = logging.getLogger(__name__)

NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def lr_multiplier(name: str, multipliers: dict[str, float]) -> float:
    """LR factor of the parameter ``name``: that of the longest matching name prefix, else 1."""
    best, factor = -1, 1.0
    for prefix, value in multipliers.items():
        if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
            best, factor = len(prefix), value
    return factor


def build_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
    multipliers: dict[str, float] | None = None,
) -> list[dict]:
    """Group the trainable parameters of ``model`` by (learning rate, weight decay).

    Args:
        model: the model; parameters with ``requires_grad=False`` are left out.
        base_lr: the base learning rate.
        weight_decay: decay of ordinary parameters (bare parameters included).
        weight_decay_norm: decay of parameters owned by normalisation layers.
        weight_decay_embed: decay of parameters owned by ``nn.Embedding`` modules.
        multipliers: LR factor per parameter-name prefix, e.g. ``{"backbone": 0.01}``.

    Returns:
        Parameter groups for a torch optimizer, each with ``lr``, ``weight_decay`` and ``names``.
    """
    multipliers = multipliers or {}
    groups: dict[tuple[float, float], dict] = defaultdict(lambda: {"params": [], "names": []})
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, NORM_TYPES):
                decay = weight_decay_norm
            elif isinstance(module, nn.Embedding):
                decay = weight_decay_embed
            else:
                decay = weight_decay
            lr = base_lr * lr_multiplier(full_name, multipliers)
            group = groups[(lr, decay)]
            group["params"].append(param)
            group["names"].append(full_name)
    out = []
    for (lr, decay), group in sorted(groups.items()):
        out.append(
            {"params": group["params"], "names": group["names"], "lr": lr, "weight_decay": decay}
        )
    return out


def with_full_model_grad_clipping(optimizer_cls: type, max_norm: float, norm_type: float = 2.0):
    """A subclass of ``optimizer_cls`` whose ``step`` first clips the gradient norm of all its
    parameters taken together (not per parameter, unlike detectron2's built-in clipping)."""

    class FullModelGradClipOptimizer(optimizer_cls):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
            return super().step(closure=closure)

    FullModelGradClipOptimizer.__name__ = f"FullModelGradClip{optimizer_cls.__name__}"
    return FullModelGradClipOptimizer


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer of ``cfg.SOLVER`` for a PixelCLIP model (see the module docstring)."""
    multipliers = {
        "backbone": cfg.SOLVER.CLIP_MULTIPLIER,
        "sem_seg_head.prompts": cfg.SOLVER.PROMPT_MULTIPLIER,
        "sem_seg_head.decoder": cfg.SOLVER.DECODER_MULTIPLIER,
    }
    groups = build_param_groups(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        weight_decay_embed=cfg.SOLVER.WEIGHT_DECAY_EMBED,
        multipliers=multipliers,
    )
    if not groups:
        raise ValueError("the model has no trainable parameter; check MODEL.CLIP.FINETUNE")
    for group in groups:
        logger.info(
            "param group lr=%.3g wd=%.3g: %d tensors (e.g. %s)",
            group["lr"],
            group["weight_decay"],
            len(group["params"]),
            group["names"][0],
        )
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        # One fused kernel for all tensors instead of a Python loop of per-tensor ops (CPU and
        # CUDA, torch >= 2.4); measured -55 % on the ViT-B/16 optimizer step (docs/PERFORMANCE.md).
        devices = {p.device.type for group in groups for p in group["params"]}
        fused = devices <= {"cpu", "cuda"} and all(
            p.is_floating_point() for group in groups for p in group["params"]
        )
        cls, kwargs = torch.optim.AdamW, {"fused": fused}
    elif name == "SGD":
        cls, kwargs = (
            torch.optim.SGD,
            {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV},
        )
    else:
        raise ValueError(
            f"unknown SOLVER.OPTIMIZER {cfg.SOLVER.OPTIMIZER!r}; choose from 'ADAMW', 'SGD'"
        )
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED:
        if clip.CLIP_TYPE != "full_model":
            raise ValueError(
                f"unknown SOLVER.CLIP_GRADIENTS.CLIP_TYPE {clip.CLIP_TYPE!r}; "
                "PixelCLIP supports 'full_model'"
            )
        cls = with_full_model_grad_clipping(cls, clip.CLIP_VALUE, clip.NORM_TYPE)
    return cls(groups, lr=cfg.SOLVER.BASE_LR, **kwargs)
