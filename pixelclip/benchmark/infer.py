"""Inference latency of one ADE20K-sized image with the 150 ADE20K classes (``infer:*``)."""

from __future__ import annotations

import time

from .common import REPO, build_cfg
from .matmul import time_against_matmul


def bench_infer(spec: str, s: dict, args) -> dict:
    import torch
    from detectron2.modeling import build_model

    from ..modeling.vocabulary import load_vocabulary
    from .device import autocast, prepare_model, synchronize
    from .train import run_switches

    _, model_key, protocol, precision = spec.split(":")
    cfg = build_cfg(model_key, precision, s, args.quick, args.opts, args.device)
    cfg.MODEL.PIXELCLIP.TEST.PROTOCOL = protocol
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    prepare_model(model, args.device, args.channels_last,
                  args.compile_backend if args.compile else None)  # fmt: skip
    names = load_vocabulary(str(REPO / "pixelclip/data/class_names/ade20k_150.json"))
    model.set_vocabulary(names[: s["num_classes"]])
    start = time.perf_counter()
    model.sem_seg_head.class_embeddings(model.vocabulary)  # cached by the model from now on
    synchronize(args.device)
    vocabulary_s = time.perf_counter() - start
    g = torch.Generator().manual_seed(0)
    size = s["infer_image_slide" if protocol == "slide" else "infer_image"]
    image = torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8)
    height, width = s["infer_original"]
    inputs = [{"image": image, "height": height, "width": width}]

    def run():
        with torch.no_grad(), autocast(args.device, precision):
            out = model(inputs)[0]["sem_seg"]
        assert out.shape == (len(model.vocabulary), height, width)

    out = time_against_matmul(run, precision, s, args)
    out.update(
        vocabulary_encoding_s=vocabulary_s,
        settings={"model": cfg.MODEL.CLIP.MODEL_NAME, "protocol": protocol,
                  "image": list(size), "output": [height, width],
                  "classes": len(model.vocabulary), "prompt_ensemble": s["ensemble"],
                  "precision": precision, **run_switches(args)},
    )  # fmt: skip
    return out
