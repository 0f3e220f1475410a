"""One training iteration of the real architectures (``train:*``) and its per-phase profile
(``profile:*``), on a synthetic batch with random weights."""

from __future__ import annotations

import time

from .common import build_cfg, count_flops, summary
from .matmul import time_against_matmul


def synthetic_batch(
    num_masks: int, size: int, grid: int, seed: int = 0, images: int = 2
) -> list[dict]:
    """``images`` random images (size x size) with ``num_masks`` random rectangles each on the
    grid."""
    import torch

    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(images):
        masks = torch.zeros(num_masks, grid, grid, dtype=torch.bool)
        for j in range(num_masks):
            y, x = torch.randint(0, grid - 2, (2,), generator=g).tolist()
            h, w = torch.randint(2, max(3, grid // 2), (2,), generator=g).tolist()
            masks[j, y : y + h, x : x + w] = True
        valid = torch.ones(grid, grid, dtype=torch.bool)
        valid[: grid // 8, : grid // 8] = False  # a cutout box, as the strong view makes
        image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
        batch.append(
            {
                "image": image,
                "image_strong": image.flip(-1).contiguous(),
                "masks": masks,
                "valid": valid,
                "height": size,
                "width": size,
            }
        )
    return batch


def make_train_step(
    cfg, num_masks: int, size: int, phases: dict | None = None, args=None, images: int = 2
):
    """One training iteration as a function: forward, backward, optimizer step. With
    SOLVER.AMP.ENABLED (``--dtype fp16``) the forward runs under fp16 autocast and the loss
    through a GradScaler, unscaled before the optimizer's gradient clipping; ``args`` brings
    ``--channels-last`` and ``--compile``."""
    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from ..solver import build_optimizer
    from .device import autocast, grad_scaler, prepare_model

    device = cfg.MODEL.DEVICE
    precision = "fp16" if cfg.SOLVER.AMP.ENABLED else "fp32"
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    if args is not None:
        prepare_model(model, device, args.channels_last, args.compile_backend if args.compile
                      else None)  # fmt: skip
    scaler = grad_scaler(device, precision)
    batch = synthetic_batch(num_masks, size, cfg.MODEL.PIXELCLIP.MASK_RESOLUTION, images=images)

    def timed(name, fn):
        start = time.perf_counter()
        with torch.profiler.record_function(name):
            out = fn()
        if phases is not None:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - start
        return out

    def step():
        with EventStorage(), autocast(device, precision):
            losses = model(batch)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            timed("backward", loss.backward)
            timed("optimizer step (clip + AdamW)", optimizer.step)
        else:
            timed("backward", scaler.scale(loss).backward)
            scaler.unscale_(optimizer)  # the clipping inside the step sees the true gradients
            timed("optimizer step (clip + AdamW)", lambda: scaler.step(optimizer))
            scaler.update()
        return loss

    step.model, step.optimizer, step.batch = model, optimizer, batch

    if phases is not None:
        instrument(model, timed)
    return step


def instrument(model, timed) -> None:
    """Time the phases of the training forward by wrapping methods on the instances."""
    from ..modeling import meta_arch

    def wrap(owner, attr, name):
        original = getattr(owner, attr)
        setattr(owner, attr, lambda *a, **k: timed(name, lambda: original(*a, **k)))

    wrap(model.teacher, "update", "teacher EMA update")
    wrap(model.teacher, "forward", "teacher forward (weak view)")
    wrap(model.sem_seg_head, "prompt_embeddings", "text tower on k prompts")
    wrap(meta_arch, "cluster_masks", "clustering (pool, Sinkhorn, targets)")
    wrap(model.backbone, "forward", "student forward (strong view)")
    wrap(model.sem_seg_head, "forward", "cost maps + decoder forward")
    wrap(meta_arch, "masked_bce_loss", "loss")


def bench_train(spec: str, s: dict, args) -> dict:
    _, model, load, precision = spec.split(":")
    size = s["models"][model]["res"] if load == "base" else s["realistic_crop"]
    cfg = build_cfg(model, precision, s, args.quick, args.opts, args.device)
    step = make_train_step(cfg, s["masks"][load], size, args=args, images=args.batch)
    out = time_against_matmul(step, precision, s, args)
    out.update(
        gflop_per_image=out["gflop"] / args.batch,
        settings={"model": cfg.MODEL.CLIP.MODEL_NAME, "clip_resolution": cfg.MODEL.CLIP.RESOLUTION,
                  "input_size": size, "images": args.batch, "masks_per_image": s["masks"][load],
                  "clusters": s["clusters"], "mask_resolution": s["grid"], "precision": precision,
                  **run_switches(args)},
    )  # fmt: skip
    return out


def run_switches(args) -> dict:
    """The device and the GPU switches a result was measured with."""
    return {"device": args.device, "tf32": args.tf32, "channels_last": args.channels_last,
            "compile": args.compile_backend if args.compile else None}  # fmt: skip


def bench_flops(spec: str, s: dict, args) -> dict:
    """``flops:{vit,convnext}:{base,realistic}``: the FLOPs of one training step at ``--batch``
    images, counted (one step under FlopCounterMode after one warm-up step), not timed."""
    import torch

    _, model, load = spec.split(":")
    size = s["models"][model]["res"] if load == "base" else s["realistic_crop"]
    cfg = build_cfg(model, "fp32", s, args.quick, args.opts, args.device)
    step = make_train_step(cfg, s["masks"][load], size, images=args.batch)
    step()
    flops, per_module = count_flops(step, by_module=True)
    top = {k: v / 1e9 for k, v in per_module.items() if 0 < k.count(".") <= 1 and v > 0}
    del step
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return {"gflop": flops / 1e9, "gflop_per_image": flops / 1e9 / args.batch,
            "gflop_by_module": top,
            "settings": {"model": cfg.MODEL.CLIP.MODEL_NAME, "images": args.batch,
                         "clip_resolution": cfg.MODEL.CLIP.RESOLUTION, "input_size": size,
                         "masks_per_image": s["masks"][load], "clusters": s["clusters"],
                         "mask_resolution": s["grid"], "precision": "fp32"}}  # fmt: skip


def bench_profile(spec: str, s: dict, args) -> dict:
    import torch

    _, model, load, precision = spec.split(":")
    cfg = build_cfg(model, precision, s, args.quick, args.opts, args.device)
    phases: dict[str, float] = {}
    step = make_train_step(cfg, s["masks"][load], s["models"][model]["res"], phases)
    flops, per_module = count_flops(step, by_module=True)  # the warm-up run
    phases.clear()
    start = time.perf_counter()
    step()
    total = time.perf_counter() - start
    phases["other (inputs, interpolation, EventStorage)"] = total - sum(phases.values())
    phases = dict(phases)  # the profiled run below must not add to these
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    self_total = sum(e.self_cpu_time_total for e in events) or 1.0
    top = [
        {"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count,
         "self_fraction": e.self_cpu_time_total / self_total}
        for e in events if not e.key.startswith(("phase", "backward", "optimizer step"))
    ][:20]  # fmt: skip
    modules = {k: v / 1e9 for k, v in per_module.items() if 0 < k.count(".") <= 2 and v > 0}
    return {**summary([total]), "gflop": flops / 1e9, "gflop_by_module": modules,
            "phases_s": phases, "top_ops": top, "settings": {"precision": precision}}  # fmt: skip
