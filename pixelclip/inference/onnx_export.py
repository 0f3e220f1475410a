"""ONNX export of PixelCLIP inference with an open vocabulary (``tools/export_onnx.py``).

:func:`export_onnx` writes two graphs (:mod:`.onnx_graphs`), so that the vocabulary stays a
run-time input:

* ``image.onnx``: ``image`` uint8 (H, W, 3) RGB, any size -> ``features`` float32 (N, D, h, w),
  unit vectors over D (N = 1 for "whole", the number of windows for "slide");
* ``head.onnx``: ``features``, ``text_embeddings`` float32 (C, D) and ``image_size`` int64 (2,) =
  (H, W) -> ``scores`` float32 (C, H, W), the cosine scores of the test protocol;

plus ``pixelclip_onnx.json`` (the protocol settings, also in each graph's metadata).
:func:`write_text_embeddings` writes the prompt-ensembled embeddings of a vocabulary as ``.npy``
(the class names beside it as ``.json``). :func:`check_onnx_export` compares onnxruntime with
the model.

What stays outside the graphs: the Predictor's ``ResizeShortestEdge(INPUT.MIN_SIZE_TEST,
MAX_SIZE_TEST)``, a PIL resize with antialiasing that ONNX's Resize does not reproduce. For
"slide" (whose windows are in pixels) resize the image first to get the Predictor's scale;
"whole" squashes it to a square anyway. The graphs are fp32 whatever ``MODEL.PIXELCLIP.PRECISION``.

onnx and onnxruntime (the ``[onnx]`` extra) are imported only by the functions that need them.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint.safe_io import write_atomically
from .onnx_graphs import ImageGraph, ScoreHead

logger = logging.getLogger(__name__)

__all__ = [
    "HEAD_FILE",
    "IMAGE_FILE",
    "MANIFEST_FILE",
    "check_onnx_export",
    "export_onnx",
    "load_model",
    "onnx_scores",
    "text_embeddings",
    "torch_scores",
    "write_text_embeddings",
]

IMAGE_FILE = "image.onnx"
HEAD_FILE = "head.onnx"
MANIFEST_FILE = "pixelclip_onnx.json"
DEFAULT_OPSET = 17  # LayerNormalization is a single op from 17 on


# ------------------------------------------------------------------------------------ export
IMAGE_AXES = {"image": {0: "height", 1: "width"}, "features": {0: "windows"}}
HEAD_AXES = {
    "features": {0: "windows"},
    "text_embeddings": {0: "classes"},
    "scores": {0: "classes", 1: "height", 2: "width"},
}


def _trace_to_onnx(module: nn.Module, args: tuple, inputs, outputs, axes, opset: int):
    """The module as an ``onnx.ModelProto`` (checked), traced on ``args``."""
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is the one that needs no package beyond onnx (torch.export's
        # needs onnxscript); torch 2.14 marks it deprecated. Its tracer warns about the tower's
        # constant-size checks, which are meant to be constant; the tests run the graphs on other
        # image sizes and window counts than the traced ones.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            args,
            buffer,
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    graph = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(graph)
    return graph


def _write_onnx(graph, path: Path, metadata: dict) -> None:
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    write_atomically(path, lambda f: f.write(graph.SerializeToString()))


def export_onnx(
    model,
    output_dir: str | os.PathLike,
    *,
    protocol: str | None = None,
    opset: int = DEFAULT_OPSET,
    source: str = "",
) -> dict:
    """Write ``image.onnx``, ``head.onnx`` and ``pixelclip_onnx.json`` into ``output_dir``.

    Args:
        model: a PixelCLIP model on the CPU (put in eval mode; its weights are not changed).
        output_dir: the folder (created).
        protocol: "whole" or "slide"; None = the model's ``test_protocol``.
        opset: the ONNX opset.
        source: a note for the manifest (e.g. the checkpoint's path).

    Returns:
        The manifest: file paths, protocol settings, pixel statistics, input and output names.
    """
    if model.device.type != "cpu":
        raise ValueError(f"export a model on the CPU (it is on {model.device})")
    model.eval()
    image_graph = ImageGraph(model, protocol).eval()
    head = ScoreHead(image_graph.settings).eval()
    settings = image_graph.settings
    # Traced on a size that matches no constant: non-square, 2 x 3 windows for "slide".
    slide = settings["protocol"] == "slide"
    side = settings["slide_crop"] if slide else settings["clip_resolution"]
    height, width = side + side // 2 + 3, 2 * side + 5
    generator = torch.Generator().manual_seed(0)  # the caller's RNG stays untouched
    sample = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
    text = F.normalize(torch.randn(3, settings["embed_dim"], generator=generator), dim=-1)
    size = torch.tensor([height, width], dtype=torch.int64)
    with torch.no_grad():
        features = image_graph(sample)
        image_onnx = _trace_to_onnx(
            image_graph, (sample,), ["image"], ["features"], IMAGE_AXES, opset
        )
        head_onnx = _trace_to_onnx(
            head,
            (features, text, size),
            ["features", "text_embeddings", "image_size"],
            ["scores"],
            HEAD_AXES,
            opset,
        )
    metadata = {
        "format": "pixelclip-onnx/1",
        **settings,
        "pixel_mean": [float(v) for v in image_graph.mean.flatten()],
        "pixel_std": [float(v) for v in image_graph.std.flatten()],
        "dense_variant": getattr(model.backbone.encoder, "variant", ""),
        "image_input": "image: uint8 (H, W, 3) RGB",
        "image_output": "features: float32 (N, D, h, w), unit vectors over D",
        "head_inputs": "features; text_embeddings: float32 (C, D); image_size: int64 (2,) = (H, W)",
        "head_output": "scores: float32 (C, H, W) cosine scores",
        "opset": opset,
        "source": source,
    }
    out = Path(output_dir)
    _write_onnx(image_onnx, out / IMAGE_FILE, metadata)
    _write_onnx(head_onnx, out / HEAD_FILE, metadata)
    manifest = {"image": str(out / IMAGE_FILE), "head": str(out / HEAD_FILE), **metadata}
    manifest_text = json.dumps(manifest, indent=1) + "\n"
    write_atomically(out / MANIFEST_FILE, lambda f: f.write(manifest_text.encode()))
    logger.info(
        "wrote %s and %s (%s protocol)", out / IMAGE_FILE, out / HEAD_FILE, settings["protocol"]
    )
    return manifest


# ------------------------------------------------------------------------------------- model
def load_model(config_file: str | None, weights: str | None, opts=()):
    """The PixelCLIP model to export, on the CPU, weights through the project's safe loader.

    Args:
        config_file: the run's config YAML; None = the ``config.yaml`` beside ``weights``.
        weights: a checkpoint (:func:`pixelclip.checkpoint.build_model_from_checkpoint`); None =
            the config's ``MODEL.WEIGHTS``; "" = none, i.e. plain CLIP of
            ``MODEL.CLIP.PRETRAINED`` (e.g. the shipped toy-clip).
        opts: ``KEY VALUE`` config overrides (e.g. ``MODEL.PIXELCLIP.TEST.PROTOCOL slide``).
    """
    from ..config import build_config
    from .predictor import Predictor

    if config_file is None:
        if not weights:
            raise ValueError("give --config-file, or a checkpoint whose config.yaml is beside it")
        config_file = str(Path(weights).parent / "config.yaml")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(
                f"checkpoint {weights!r}: no config.yaml beside it; pass --config-file"
            )
    cfg = build_config(config_file, list(opts))
    return Predictor(cfg, weights=weights, device="cpu").model


# -------------------------------------------------------------------------------- vocabulary
def text_embeddings(model, vocabulary) -> tuple[np.ndarray, list[str]]:
    """Prompt-ensembled text embeddings of a vocabulary, as the model computes them at test time.

    Args:
        model: a PixelCLIP model.
        vocabulary: anything :func:`pixelclip.inference.predictor.parse_vocabulary` takes.

    Returns:
        float32 (C, D) unit rows and the C class names (the model's "a, b" synonym convention).
    """
    from .predictor import parse_vocabulary

    names = parse_vocabulary(vocabulary)
    with torch.no_grad():
        emb = model.sem_seg_head.class_embeddings(names).float().cpu().numpy()
    return np.ascontiguousarray(emb, dtype=np.float32), names


def write_text_embeddings(model, vocabulary, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write :func:`text_embeddings` to ``path`` (.npy) and the class names beside it (.json).

    Returns:
        The two paths.
    """
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"{str(path)!r}: the text embeddings are written as a .npy file")
    emb, names = text_embeddings(model, vocabulary)
    write_atomically(path, lambda f: np.save(f, emb))
    names_path = path.with_suffix(".json")
    text = json.dumps({"classes": names, "shape": list(emb.shape)}, indent=1) + "\n"
    write_atomically(names_path, lambda f: f.write(text.encode()))
    logger.info("wrote %d class embeddings to %s (names in %s)", len(names), path, names_path)
    return path, names_path


# ------------------------------------------------------------------------------------ checks
def onnx_scores(image_session, head_session, rgb: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Run both graphs: uint8 (H, W, 3) RGB and (C, D) embeddings -> float32 (C, H, W)."""
    features = image_session.run(None, {"image": rgb})[0]
    size = np.array(rgb.shape[:2], dtype=np.int64)
    feeds = {"features": features, "text_embeddings": text, "image_size": size}
    return head_session.run(None, feeds)[0]


def torch_scores(model, rgb: np.ndarray, names: list[str]) -> np.ndarray:
    """The model's own inference on the same image (no test-time resize): (C, H, W)."""
    if model.vocabulary != names:
        model.set_vocabulary(names)
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    if model.input_format == "BGR":
        image = image.flip(0)
    height, width = rgb.shape[:2]
    with torch.no_grad():
        out = model([{"image": image, "height": height, "width": width}])[0]["sem_seg"]
    return out.float().cpu().numpy()


def check_onnx_export(
    model, output_dir: str | os.PathLike, sizes, vocabularies, seed: int = 0
) -> list[dict]:
    """Compare the exported graphs (onnxruntime, CPU) with the model on random images.

    The model must use the protocol the graphs were exported with (``model.test_protocol``).

    Args:
        model: the exported PixelCLIP model.
        output_dir: the folder of :func:`export_onnx`.
        sizes: (H, W) image sizes to try.
        vocabularies: vocabularies to try (anything ``parse_vocabulary`` takes).

    Returns:
        One dict per (size, vocabulary): "size", "classes", "max_abs_diff".
    """
    import onnxruntime as ort

    out = Path(output_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    providers = ["CPUExecutionProvider"]
    image_session = ort.InferenceSession(str(out / IMAGE_FILE), options, providers=providers)
    head_session = ort.InferenceSession(str(out / HEAD_FILE), options, providers=providers)
    rng = np.random.default_rng(seed)
    results = []
    for vocabulary in vocabularies:
        text, names = text_embeddings(model, vocabulary)
        for height, width in sizes:
            rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            got = onnx_scores(image_session, head_session, rgb, text)
            want = torch_scores(model, rgb, names)
            if got.shape != want.shape:
                raise ValueError(f"ONNX scores {got.shape} but the model gives {want.shape}")
            diff = float(np.abs(got - want).max())
            results.append({"size": (height, width), "classes": len(names), "max_abs_diff": diff})
    return results
