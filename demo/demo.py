#!/usr/bin/env python
"""PixelCLIP demo: open-vocabulary semantic segmentation of images, folders or a video.

Each image is segmented into the classes of a vocabulary you choose at run time and written as a
PNG overlay drawn by detectron2's ``Visualizer`` (colour + class name per region). Uses the Python
API ``pixelclip.inference.predictor.Predictor``.

Examples::

    python demo/demo.py --config-file output/config.yaml --weights output/model_final.pth \\
        --input photos/ --output overlays/ --vocabulary "cat, dog | puppy, grass, sky"
    python demo/demo.py --config-file ... --input "photos/*.jpg" --output out/ \\
        --vocabulary ade20k_150 --save-logits npy
    python demo/demo.py --config-file ... --video-input clip.mp4 --output out/ --max-frames 100 \\
        --vocabulary classes.json --opts MODEL.PIXELCLIP.TEST.PROTOCOL slide

Exit code: 0 when every input was processed, 1 when some input could not be read (each one is
reported and skipped), 2 on a usage or setup error.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import sys
from pathlib import Path

import numpy as np

from pixelclip.cli_help import HelpFormatter

# Allow `python demo/demo.py` from a checkout without installing the package. Heavy imports
# (torch, detectron2, cv2) happen in main() so that --help answers at once.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("pixelclip.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Container -> OpenCV FourCC that opencv-python(-headless) wheels can always write.
VIDEO_FORMATS = {"mp4": "mp4v", "avi": "MJPG"}

VOCABULARY_HELP = (
    'Classes to segment: free text "cat, dog | puppy, grass" (commas separate classes, "|" '
    "separates synonyms of one class, whose text embeddings are averaged); or a JSON file with a "
    'list of names (a name "a, b" in a file is one class with synonyms a and b) or '
    '{"stuff_classes": [...]}; or a dataset name: a registered detectron2 dataset such as '
    "ade20k_150_val_sem_seg, or a class list shipped with pixelclip (ade20k_150, coco_stuff_171, "
    "pascal_context_59, pascal_context_60, cityscapes_19, voc_20, voc_21). Default: the config's "
    "MODEL.PIXELCLIP.TEST.VOCABULARY / VOCABULARY_FILE."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="PixelCLIP demo: segment images, folders or a video into the classes of a "
        "free vocabulary; writes detectron2 Visualizer overlays as PNG files (one per image, "
        "named after the input) or an overlay video.",
        epilog=__doc__[__doc__.index("Examples::") :].replace("::", ":"),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--config-file", required=True, metavar="FILE", help="PixelCLIP config YAML."
    )
    parser.add_argument(
        "--weights",
        default=None,
        metavar="FILE",
        help="Trained PixelCLIP checkpoint (.pth); default: the config's MODEL.WEIGHTS (if empty: "
        "plain CLIP of MODEL.CLIP.PRETRAINED). Pickle (.pkl) files are refused.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input",
        nargs="+",
        metavar="PATH",
        help="Image files, folders (their images, not recursive: "
        f"{' '.join(IMAGE_EXTENSIONS)}) or glob patterns (quote them; ** recurses).",
    )
    source.add_argument("--video-input", metavar="FILE", help="A video file read with OpenCV.")
    parser.add_argument(
        "--output",
        metavar="PATH",
        help="Output folder (created), required for folders, globs, videos and --save-logits. "
        "Overlays are <output>/<input stem>.png, logits <input stem>.npy|.pt next to them, "
        "class order in <output>/classes.json; a video becomes <output>/<stem>.<video-format>. "
        "With a single input image it may be a .png file name. Without --output, the class "
        "areas of each image are only printed.",
    )
    parser.add_argument("--vocabulary", metavar="SPEC", help=VOCABULARY_HELP)
    parser.add_argument(
        "--save-logits",
        nargs="?",
        const="npy",
        choices=("npy", "pt"),
        default=None,
        help="Also write the raw float32 (C, H, W) class scores at the image size: npy (numpy, "
        "the default when the flag has no value) or pt (a torch tensor). Video frames go to "
        "<output>/<stem>_logits/<frame index>.npy|.pt.",
    )
    parser.add_argument(
        "--opacity",
        type=float,
        default=0.6,
        help="Opacity of the class colours over the image, in [0, 1] (default: 0.6).",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="Device such as cpu, cuda, cuda:1; default: MODEL.DEVICE, or the CPU when CUDA is "
        "missing.",
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=0,
        metavar="N",
        help="Process at most N frames of --video-input (0 = all).",
    )
    parser.add_argument(
        "--video-format",
        choices=sorted(VIDEO_FORMATS),
        default="mp4",
        help="Container of the output video: mp4 (MPEG-4 part 2 'mp4v', the default) or avi "
        "(Motion JPEG).",
    )
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="KEY VALUE",
        help="Config overrides as KEY VALUE pairs; must come last (everything after it is "
        "taken), e.g. --opts MODEL.PIXELCLIP.TEST.PROTOCOL slide INPUT.MIN_SIZE_TEST 512.",
    )
    return parser


# ------------------------------------------------------------------------------------- inputs
def expand_inputs(items: list[str]) -> tuple[list[Path], list[str]]:
    """Image paths from files, folders and globs, in order; plus the patterns matching nothing.

    Plain file names are kept even when missing, so that they are reported as failures.
    """
    paths, unmatched = [], []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
        elif glob.has_magic(item):
            found = [Path(p) for p in sorted(glob.glob(item, recursive=True)) if Path(p).is_file()]
        else:
            found = [path]
        if not found:
            unmatched.append(item)
        paths.extend(found)
    return paths, unmatched


def output_names(paths: list[Path]) -> list[str]:
    """``<stem>`` per input, made unique (``<stem>_1``...) when stems repeat."""
    names, used = [], set()
    for path in paths:
        name, i = path.stem, 0
        while name in used:
            i += 1
            name = f"{path.stem}_{i}"
        used.add(name)
        names.append(name)
    return names


# ---------------------------------------------------------------------------------- drawing
def class_colors(classes: list[str], vocabulary: str | None) -> list[list[int]]:
    """Deterministic RGB colours: the dataset's stuff_colors when the vocabulary is a registered
    dataset with as many colours as classes, else the Pascal VOC colour map without its black."""
    from detectron2.data import MetadataCatalog

    from pixelclip.data.benchmarks import voc_colormap

    if vocabulary and vocabulary in MetadataCatalog.list():
        colors = MetadataCatalog.get(vocabulary).get("stuff_colors", None)
        if colors is not None and len(colors) == len(classes):
            return [list(c) for c in colors]
    return voc_colormap(len(classes) + 1)[1:]


def make_metadata(classes: list[str], colors: list[list[int]]):
    """A detectron2 Metadata labelling each class by its first synonym."""
    from detectron2.data.catalog import Metadata

    labels = [name.split(",")[0].strip() for name in classes]
    return Metadata(name="pixelclip_demo", stuff_classes=labels, stuff_colors=colors)


def draw_overlay(rgb: np.ndarray, labels, metadata, opacity: float) -> np.ndarray:
    """RGB uint8 (H, W, 3) overlay of a (H, W) label map, the size of ``rgb``."""
    import cv2
    from detectron2.utils.visualizer import Visualizer

    vis = Visualizer(rgb, metadata, scale=1.0).draw_sem_seg(labels, alpha=opacity).get_image()
    if vis.shape[:2] != rgb.shape[:2]:  # guard against canvas rounding
        vis = cv2.resize(vis, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    return vis


def save_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path, format="PNG")


def save_logits(path_no_suffix: Path, scores, kind: str) -> Path:
    path = path_no_suffix.with_name(f"{path_no_suffix.name}.{kind}")
    if kind == "npy":
        np.save(path, scores.numpy().astype(np.float32))
    else:
        import torch

        torch.save(scores.float().contiguous(), path)
    return path


def area_summary(labels, metadata, top: int = 5) -> str:
    counts = np.bincount(labels.numpy().ravel(), minlength=len(metadata.stuff_classes))
    order = np.argsort(-counts, kind="stable")[:top]
    total = counts.sum()
    return ", ".join(
        f"{metadata.stuff_classes[i]} {100.0 * counts[i] / total:.1f}%" for i in order if counts[i]
    )


# ---------------------------------------------------------------------------------- running
def run_images(args, predictor, metadata) -> int:
    """Segment every image; returns the number of inputs that failed."""
    from pixelclip.inference.predictor import read_rgb_image
    from pixelclip.logs import progress

    paths, unmatched = expand_inputs(args.input)
    for pattern in unmatched:
        logger.error("no image matches %r", pattern)
    out = Path(args.output) if args.output else None
    single_file = out is not None and out.suffix.lower() == ".png" and len(paths) == 1
    if out is not None and not single_file:
        out.mkdir(parents=True, exist_ok=True)
        (out / "classes.json").write_text(json.dumps(predictor.classes, indent=1) + "\n")
    failures = len(unmatched)
    pairs = list(zip(paths, output_names(paths)))
    with progress(pairs, desc="images", unit="img") as bar:
        for path, name in bar:
            target = out if single_file else (out / f"{name}.png" if out is not None else None)
            if target is not None and target.resolve() == path.resolve():
                logger.error("skipping %s: the overlay would overwrite the input", path)
                failures += 1
                continue
            try:
                rgb = read_rgb_image(path)
            except (FileNotFoundError, ValueError) as e:
                logger.error("skipping: %s", e)
                failures += 1
                continue
            result = predictor(rgb)
            summary = area_summary(result["labels"], metadata)
            if target is None:
                bar.write(f"{path}: {summary}")
                continue
            save_png(target, draw_overlay(rgb, result["labels"], metadata, args.opacity))
            if args.save_logits:
                save_logits(target.with_suffix(""), result["sem_seg"], args.save_logits)
            bar.write(f"{path} -> {target}: {summary}")
    logger.info(
        "processed %d image(s), %d failed", len(paths) + len(unmatched) - failures, failures
    )
    return failures


def run_video(args, predictor, metadata) -> int:
    """Segment the frames of a video into an overlay video; returns 1 on failure, else 0."""
    import cv2

    from pixelclip.logs import progress

    source = Path(args.video_input)
    capture = cv2.VideoCapture(str(source))
    if not source.is_file() or not capture.isOpened():
        logger.error("cannot open video %s", source)
        return 1
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    if args.max_frames > 0:
        total = min(total or args.max_frames, args.max_frames)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.json").write_text(json.dumps(predictor.classes, indent=1) + "\n")
    target = out / f"{source.stem}.{args.video_format}"
    fourcc = cv2.VideoWriter_fourcc(*VIDEO_FORMATS[args.video_format])
    writer = cv2.VideoWriter(str(target), fourcc, fps, (width, height))
    if not writer.isOpened():
        logger.error("cannot write %s with codec %s", target, VIDEO_FORMATS[args.video_format])
        capture.release()
        return 1
    logits_dir = out / f"{source.stem}_logits"
    if args.save_logits:
        logits_dir.mkdir(exist_ok=True)
    frames = 0
    try:
        with progress(None, total=total, desc="frames", unit="frame") as bar:
            while args.max_frames <= 0 or frames < args.max_frames:
                ok, frame = capture.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                result = predictor(rgb)
                vis = draw_overlay(rgb, result["labels"], metadata, args.opacity)
                if vis.shape[:2] != (height, width):  # the writer drops frames of another size
                    vis = cv2.resize(vis, (width, height), interpolation=cv2.INTER_LINEAR)
                writer.write(cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
                if args.save_logits:
                    save_logits(logits_dir / f"{frames:06d}", result["sem_seg"], args.save_logits)
                frames += 1
                bar.update(1)
    finally:
        writer.release()
        capture.release()
    print(f"{source} -> {target}: {frames} frame(s)")
    return 0 if frames else 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.opacity <= 1.0:
        parser.error(f"--opacity must be in [0, 1], got {args.opacity}")
    if args.max_frames < 0:
        parser.error(f"--max-frames must be >= 0, got {args.max_frames}")
    needs_folder = args.video_input or args.save_logits or len(args.input or ()) > 1
    needs_folder = needs_folder or any(
        Path(i).is_dir() or glob.has_magic(i) for i in args.input or ()
    )
    if needs_folder and not args.output:
        parser.error("--output is required for folders, globs, several images, videos and logits")
    if args.video_input and args.output and Path(args.output).suffix:
        parser.error(f"--output {args.output!r}: a video needs an output folder")
    if len(args.opts) % 2:
        parser.error(f"config overrides must be KEY VALUE pairs, got {args.opts}")

    from pixelclip.inference.predictor import Predictor, build_config, parse_vocabulary
    from pixelclip.modeling.vocabulary import load_vocabulary

    if args.video_input and not Path(args.video_input).is_file():
        logger.error("video %s does not exist", args.video_input)
        return 1
    try:
        cfg = build_config(args.config_file, args.opts)
        # Check what needs no model before building it.
        test = cfg.MODEL.PIXELCLIP.TEST
        if args.vocabulary is not None:
            classes = parse_vocabulary(args.vocabulary)
        elif test.VOCABULARY_FILE:
            classes = load_vocabulary(test.VOCABULARY_FILE)
        else:
            classes = list(test.VOCABULARY)
        if not classes:
            raise ValueError(
                "no vocabulary: pass --vocabulary, or set MODEL.PIXELCLIP.TEST.VOCABULARY"
            )
        predictor = Predictor(cfg, weights=args.weights, device=args.device, vocabulary=classes)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    classes = predictor.classes
    metadata = make_metadata(classes, class_colors(classes, args.vocabulary))
    shown = "; ".join(classes[:10]) + ("; ..." if len(classes) > 10 else "")
    logger.info("%d classes: %s", len(classes), shown)
    failures = run_video(args, predictor, metadata) if args.video_input else None
    if failures is None:
        failures = run_images(args, predictor, metadata)
    return 1 if failures else 0


if __name__ == "__main__":
    from pixelclip.logs import setup_logging

    setup_logging(third_party_level=logging.WARNING)  # ours at INFO; third-party INFO is noise
    sys.exit(main())
