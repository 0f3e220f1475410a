#!/usr/bin/env python
"""PixelCLIP web demo (Gradio, the ``[demo]`` extra): upload an image or pick an example, type a
vocabulary, choose the test protocol; see the detectron2 ``Visualizer`` overlay and the area of
each class.

Without weights it starts on the shipped toy-clip (plain CLIP pretrained on ToyWorld's captions,
``configs/toyworld/pixelclip_toyclip.yaml``) with generated ToyWorld images as examples::

    python demo/app.py                                   # toy-clip, http://127.0.0.1:7860
    python demo/app.py --config-file output/config.yaml --weights output/model_final.pth
    python demo/app.py output/model_final.pth            # the run's config.yaml beside it

The server listens on 127.0.0.1 only unless --host says otherwise. The vocabulary syntax is the
one of demo/demo.py (commas separate classes, "|" separates synonyms of one class, or a shipped
class list such as ade20k_150); files are not read from the web page.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pixelclip.cli_help import HelpFormatter

REPO = Path(__file__).resolve().parents[1]
# Allow `python demo/app.py` from a checkout without installing the package. Heavy imports
# (torch, detectron2, gradio) happen in main() so that --help answers at once.
sys.path.insert(0, str(REPO))

logger = logging.getLogger("pixelclip.app")

TOY_CONFIG = REPO / "configs" / "toyworld" / "pixelclip_toyclip.yaml"
PROTOCOLS = ("whole", "slide")
MIN_DISPLAY_SIDE = 384  # small images are enlarged (nearest) so that the labels stay legible
NUM_EXAMPLES = 3
AREA_HEADERS = ["class", "area (%)", "pixels"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Without weights") :],
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "checkpoint", nargs="?", help="A checkpoint (.pth) with the run's config.yaml beside it."
    )
    parser.add_argument("--config-file", metavar="FILE", help="PixelCLIP config YAML.")
    parser.add_argument(
        "--weights",
        metavar="FILE",
        help="Trained checkpoint; default: the config's MODEL.WEIGHTS (if empty: plain CLIP).",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, ...; default: MODEL.DEVICE.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=int, default=7860, help="Port (default: 7860).")
    parser.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
        help="Config overrides as KEY VALUE pairs; must come last.",
    )  # fmt: skip
    return parser


def _cli_demo():
    """demo/demo.py, for its drawing helpers (one way to draw, shared with the CLI demo)."""
    spec = importlib.util.spec_from_file_location("pixelclip_cli_demo", REPO / "demo" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- segmentation
def web_vocabulary(text: str) -> list[str]:
    """The classes typed on the page (see :func:`pixelclip.inference.parse_vocabulary`), with
    file paths refused: the page must not make the server read its files."""
    from pixelclip.inference.predictor import parse_vocabulary

    text = (text or "").strip()
    if text.lower().endswith(".json") or os.path.exists(text):
        raise ValueError("the web demo takes class names, not files: type e.g. 'cat, dog | puppy'")
    return parse_vocabulary(text)


def area_rows(labels: np.ndarray, classes: list[str]) -> list[list]:
    """[class, area in %, pixels] per class, largest first (classes of no pixel included);
    synonyms shown as typed, "a | b"."""
    counts = np.bincount(labels.ravel(), minlength=len(classes))
    order = np.argsort(-counts, kind="stable")
    total = max(int(counts.sum()), 1)
    return [
        [_as_typed(classes[i]), round(100.0 * counts[i] / total, 2), int(counts[i])] for i in order
    ]


def _as_typed(name: str) -> str:
    return " | ".join(s.strip() for s in name.split(","))


def render(rgb: np.ndarray, labels: np.ndarray, classes: list[str], opacity: float, drawing):
    """The Visualizer overlay, enlarged (nearest) when the image is small."""
    factor = max(1, math.ceil(MIN_DISPLAY_SIDE / max(rgb.shape[:2])))
    if factor > 1:
        rgb = rgb.repeat(factor, axis=0).repeat(factor, axis=1)
        labels = labels.repeat(factor, axis=0).repeat(factor, axis=1)
    metadata = drawing.make_metadata(classes, drawing.class_colors(classes, None))
    return drawing.draw_overlay(np.ascontiguousarray(rgb), labels, metadata, opacity)


class Segmenter:
    """The page's one action: image + vocabulary + protocol -> overlay, area table, status."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self.drawing = _cli_demo()

    def __call__(self, image, vocabulary: str, protocol: str, opacity: float = 0.6):
        from pixelclip.inference.predictor import to_rgb_array

        if image is None:
            raise ValueError("upload an image or pick an example first")
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose from {list(PROTOCOLS)}")
        classes = web_vocabulary(vocabulary)
        rgb = to_rgb_array(image)
        start = time.perf_counter()
        self.predictor.model.test_protocol = protocol  # calls are serialised (one at a time)
        labels = self.predictor(rgb, classes)["labels"].numpy()
        seconds = time.perf_counter() - start
        overlay = render(rgb, labels, classes, float(opacity), self.drawing)
        status = (
            f"{len(classes)} classes, {protocol} protocol, image {rgb.shape[1]} x "
            f"{rgb.shape[0]} px, {seconds:.2f} s"
        )
        return overlay, area_rows(labels, classes), status


# --------------------------------------------------------------------------------- the page
def write_examples(folder: Path, count: int = NUM_EXAMPLES) -> list[Path]:
    """ToyWorld test-split images (seed 0, 96 px: the world toy-clip was pretrained on)."""
    from PIL import Image

    from pixelclip.toyworld import generate_toyworld

    batch = generate_toyworld(count, image_size=96, seed=0, split="test")
    paths = []
    for i, image in enumerate(batch.images):
        path = folder / f"toyworld_test_{i}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def build_app(segmenter: Segmenter, default_vocabulary: str, examples: list[Path], title: str):
    import gradio as gr

    def run(image, vocabulary, protocol, opacity):
        try:
            return segmenter(image, vocabulary, protocol, opacity)
        except (ValueError, FileNotFoundError) as e:
            raise gr.Error(str(e)) from None

    with gr.Blocks(title="PixelCLIP", analytics_enabled=False) as app:
        gr.Markdown(f"## PixelCLIP: open-vocabulary segmentation\n{title}")
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    type="numpy", sources=["upload"], label="Image", buttons=["fullscreen"],
                    elem_id="image",
                )  # fmt: skip
                vocabulary = gr.Textbox(
                    value=default_vocabulary,
                    label='Vocabulary (commas separate classes, "|" separates synonyms)',
                    placeholder="cat, dog | puppy, grass",
                    elem_id="vocabulary",
                )
                protocol = gr.Radio(
                    list(PROTOCOLS), value=segmenter.predictor.model.test_protocol,
                    label="Protocol", elem_id="protocol",
                )  # fmt: skip
                opacity = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Opacity")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                overlay = gr.Image(
                    label="Segmentation", format="png", buttons=["download", "fullscreen"],
                    elem_id="overlay",
                )  # fmt: skip
                status = gr.Markdown(elem_id="status")
                areas = gr.Dataframe(
                    headers=AREA_HEADERS, label="Area per class", max_height=1000,
                    elem_id="areas",
                )  # fmt: skip
        if examples:
            gr.Examples(
                [[str(p), default_vocabulary] for p in examples],
                inputs=[image, vocabulary],
                label="ToyWorld examples",
            )
        button.click(
            run, [image, vocabulary, protocol, opacity], [overlay, areas, status],
            concurrency_limit=1,
        )  # fmt: skip
    return app


def load_predictor(args):
    """The Predictor of the command line; toy-clip without weights when nothing is given."""
    from pixelclip.config import build_config
    from pixelclip.inference.predictor import Predictor

    if args.checkpoint and (args.config_file or args.weights):
        raise ValueError("give a checkpoint or --config-file/--weights, not both")
    config, weights = args.config_file, args.weights
    if args.checkpoint:
        config, weights = str(Path(args.checkpoint).parent / "config.yaml"), args.checkpoint
    elif config is None and weights:
        config = str(Path(weights).parent / "config.yaml")
    elif config is None:
        config, weights = str(TOY_CONFIG), ""
    if not os.path.isfile(config):
        raise FileNotFoundError(f"config file {config!r} does not exist")
    cfg = build_config(config, args.opts)
    title = f"Model: `{Path(weights).name if weights else cfg.MODEL.CLIP.MODEL_NAME}`"
    if not weights and not cfg.MODEL.WEIGHTS:
        title += " (plain CLIP, not fine-tuned by PixelCLIP)"
    return Predictor(cfg, weights=weights, device=args.device), title


def default_vocabulary(predictor) -> str:
    """The config's test vocabulary; ToyWorld's classes for toy-clip; else nothing."""
    from pixelclip.modeling.vocabulary import load_vocabulary
    from pixelclip.toyworld import TOYWORLD_CLASSES

    test = predictor.cfg.MODEL.PIXELCLIP.TEST
    names = load_vocabulary(test.VOCABULARY_FILE) if test.VOCABULARY_FILE else test.VOCABULARY
    if not names and predictor.cfg.MODEL.CLIP.MODEL_NAME == "toy-clip":
        names = TOYWORLD_CLASSES
    return ", ".join(_as_typed(n) for n in names)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.opts) % 2:
        parser.error(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    # No telemetry or version check from a closed network, before gradio is imported.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the web demo needs gradio: pip install -e '.[demo]'", file=sys.stderr)
        return 2
    try:
        predictor, title = load_predictor(args)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s: the demo is reachable from other machines", args.host)
    with tempfile.TemporaryDirectory(prefix="pixelclip_app_") as folder:
        examples = write_examples(Path(folder))
        app = build_app(Segmenter(predictor), default_vocabulary(predictor), examples, title)
        app.queue(default_concurrency_limit=1)
        app.launch(
            server_name=args.host,
            server_port=args.port,
            ssr_mode=False,
            allowed_paths=[folder],
            show_error=True,
        )
    return 0


if __name__ == "__main__":
    from pixelclip.logs import setup_logging

    setup_logging(third_party_level=logging.WARNING)  # ours at INFO; third-party INFO is noise
    sys.exit(main())
