"""A Python inference API: one image and a free vocabulary in, per-pixel class scores out.

``Predictor`` plays the role of detectron2's ``DefaultPredictor`` for PixelCLIP, with two
deliberate differences: images are **RGB** (the order of PIL, matplotlib and most Python code;
``input_format="BGR"`` accepts OpenCV arrays instead), whatever ``cfg.INPUT.FORMAT`` the model
was trained with; and the vocabulary can change on every call (docs/METHOD.md §9)::

    predictor = Predictor("output/config.yaml", weights="output/model_final.pth")
    out = predictor(rgb_image, "cat, dog | puppy, grass")
    out["labels"]  # (H, W) int64 indices into out["classes"] == ["cat", "dog, puppy", "grass"]
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

from ..checkpoint import build_model_from_checkpoint
from ..config import build_config
from ..modeling.vocabulary import load_vocabulary

logger = logging.getLogger(__name__)

__all__ = ["Predictor", "build_config", "parse_vocabulary", "read_rgb_image", "to_rgb_array"]

CHANNEL_ORDERS = ("RGB", "BGR")
CONFIG_SUFFIXES = (".yaml", ".yml")
CHECKPOINT_SUFFIXES = (".pth", ".pt")

VOCABULARY_SYNTAX = (
    'free text "cat, dog | puppy, grass": commas separate classes, "|" separates synonyms of '
    'one class; or a JSON file holding a list of names (or {"stuff_classes": [...]}); or a '
    "dataset name (a registered detectron2 dataset with stuff_classes, e.g. "
    '"ade20k_150_val_sem_seg", or a class list shipped with pixelclip, e.g. "ade20k_150")'
)


# ------------------------------------------------------------------------------- vocabulary
def _synonyms(name: str, source: str) -> str:
    """'a | b' -> 'a, b' (the model's synonym convention); plain names pass through."""
    if "|" not in name:
        return name.strip()
    parts = [p.strip() for p in name.split("|")]
    if not all(parts):
        raise ValueError(f"{source}: class {name!r} has an empty synonym around '|'")
    return ", ".join(parts)


def _dataset_names(name: str) -> list[str] | None:
    """Class names of a registered dataset or of a class list shipped with pixelclip."""
    if name in DatasetCatalog.list() or name in MetadataCatalog.list():
        return load_vocabulary(name)
    from ..data.benchmarks import BENCHMARKS, class_list_keys, load_class_names

    keys = {spec.name: spec.classes for spec in BENCHMARKS}  # not necessarily registered yet
    keys.update({key: key for key in class_list_keys()})
    return load_class_names(keys[name]) if name in keys else None


def parse_vocabulary(spec) -> list[str]:
    """Resolve a vocabulary of the demo / Python API to the model's class names.

    The model's convention is one string per class, "a, b" for a class with synonyms a and b.

    Args:
        spec: one of
            - a list/tuple of names, one per class; a name "a | b" (or the model's "a, b") is one
              class with synonyms a and b;
            - a string, tried in this order: an existing JSON file (a list of names, or a dict
              with "stuff_classes"; names follow the model's "a, b" convention); a registered
              detectron2 dataset with stuff_classes; a benchmark or class-list name shipped with
              pixelclip (``ade20k_150_val_sem_seg``, ``ade20k_150``, ...); otherwise free text
              "cat, dog | puppy, grass" where commas separate classes and "|" separates the
              synonyms of one class;
            - an ``os.PathLike`` to a JSON file.

    Returns:
        C >= 1 class names in the model's convention, e.g. ``["cat", "dog, puppy", "grass"]``.

    Raises:
        FileNotFoundError: a string ending in ".json", or a path, that does not exist.
        ValueError: an empty vocabulary, an empty class or synonym, a malformed file.
    """
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError("vocabulary: the list is empty; expected at least one class name")
        names = [_synonyms(n, "vocabulary") if isinstance(n, str) else n for n in spec]
        return load_vocabulary(names)
    if isinstance(spec, os.PathLike):
        return load_vocabulary(spec)
    if not isinstance(spec, str):
        raise ValueError(
            f"vocabulary: expected a list of names, a string or a JSON path, got "
            f"{type(spec).__name__}"
        )
    text = spec.strip()
    if not text:
        raise ValueError(f"vocabulary {spec!r} is empty; expected {VOCABULARY_SYNTAX}")
    if Path(text).is_file():
        return load_vocabulary(Path(text))
    if text.lower().endswith(".json"):
        raise FileNotFoundError(f"vocabulary file {text!r} does not exist")
    names = _dataset_names(text)
    if names is not None:
        return names
    classes = [c.strip() for c in text.split(",")]
    if not all(classes):
        raise ValueError(f"vocabulary {spec!r} has an empty class between commas")
    return load_vocabulary([_synonyms(c, f"vocabulary {spec!r}") for c in classes])


# ---------------------------------------------------------------------------------- images
def read_rgb_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3), EXIF orientation applied.

    Grayscale, palette and RGBA files are converted to RGB (alpha is dropped, not composited).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded as an image.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path!r} does not exist")
    try:
        return read_image(path, format="RGB")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise ValueError(f"cannot read image {path!r}: {type(e).__name__}: {e}") from e


def to_rgb_array(image, input_format: str = "RGB") -> np.ndarray:
    """Bring an image to RGB uint8 (H, W, 3).

    Args:
        image: a file path (read as RGB whatever ``input_format``), a ``PIL.Image``, or a numpy
            uint8 array (H, W) grayscale, (H, W, 1), (H, W, 3) in ``input_format`` order, or
            (H, W, 4) in ``input_format`` order plus alpha (alpha is dropped).
        input_format: channel order of array inputs, "RGB" or "BGR".

    Returns:
        A C-contiguous uint8 (H, W, 3) array in RGB order.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_rgb_image(image)
    if type(image).__module__.startswith("PIL."):
        return np.ascontiguousarray(np.asarray(image.convert("RGB")))
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"image: expected a file path, a PIL image or a numpy uint8 (H, W, 3) array, got "
            f"{type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise ValueError(f"image: expected dtype uint8 (0-255), got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or 0 in image.shape[:2]:
        raise ValueError(
            f"image: expected a non-empty (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, got "
            f"shape {image.shape}"
        )
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    image = image[:, :, :3]
    if input_format == "BGR":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


# ---------------------------------------------------------------------------------- config
def _resolve_source(cfg_or_path, weights: str | None) -> tuple[CfgNode, str]:
    if isinstance(cfg_or_path, CfgNode):
        if "PIXELCLIP" not in cfg_or_path.MODEL:
            raise ValueError(
                "config: MODEL.PIXELCLIP is missing; build it with get_cfg() + "
                "pixelclip.add_pixelclip_config(cfg)"
            )
        cfg = cfg_or_path.clone()
        cfg.defrost()  # a frozen config (as train_net leaves it) is accepted too
    elif isinstance(cfg_or_path, (str, os.PathLike)):
        path = Path(cfg_or_path)
        suffix = path.suffix.lower()
        if suffix in CHECKPOINT_SUFFIXES:
            # detectron2's default_setup writes the run's config.yaml next to its checkpoints.
            config_file = path.parent / "config.yaml"
            if not config_file.is_file():
                raise FileNotFoundError(
                    f"checkpoint {str(path)!r}: no config.yaml next to it; pass the config "
                    f"file and weights=... instead"
                )
            weights = weights or str(path)
            path = config_file
        elif suffix not in CONFIG_SUFFIXES:
            raise ValueError(
                f"{str(path)!r}: expected a config file ({'/'.join(CONFIG_SUFFIXES)}), a "
                f"checkpoint ({'/'.join(CHECKPOINT_SUFFIXES)}) or a CfgNode"
            )
        cfg = build_config(path)
    else:
        raise ValueError(
            f"expected a CfgNode or a config/checkpoint path, got {type(cfg_or_path).__name__}"
        )
    return cfg, weights if weights is not None else cfg.MODEL.WEIGHTS


def _pick_device(requested: str | None, configured: str) -> str:
    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} requested but CUDA is not available")
        return requested
    if configured.startswith("cuda") and not torch.cuda.is_available():
        # detectron2's default MODEL.DEVICE is "cuda": a CPU-only machine still works.
        logger.info("MODEL.DEVICE=%r but CUDA is not available: running on the CPU", configured)
        return "cpu"
    return configured


# ------------------------------------------------------------------------------- predictor
class Predictor:
    """PixelCLIP inference on single images with a run-time vocabulary.

    The image goes through detectron2's test-time ``ResizeShortestEdge(INPUT.MIN_SIZE_TEST,
    INPUT.MAX_SIZE_TEST)`` (as in ``DefaultPredictor``; MIN_SIZE_TEST 0 = no resize) and is
    given to the model in ``cfg.INPUT.FORMAT`` channel order; the scores come back at the
    original size. Text embeddings of each vocabulary are cached by the model, so switching
    between vocabularies costs a text-tower pass only the first time.

    Attributes:
        cfg: the frozen config the model was built from (MODEL.DEVICE = the device used).
        model: the PixelCLIP model in eval mode.
        input_format: channel order of numpy arrays given to ``__call__`` ("RGB" or "BGR").
        classes: the current vocabulary in the model's convention (None until one is set).
    """

    def __init__(
        self,
        cfg_or_path: CfgNode | str | os.PathLike,
        weights: str | None = None,
        device: str | None = None,
        *,
        vocabulary=None,
        input_format: str = "RGB",
    ):
        """
        Args:
            cfg_or_path: a detectron2 config with PixelCLIP keys; a config YAML path (read over
                detectron2 + PixelCLIP defaults); or a checkpoint .pth/.pt with the run's
                ``config.yaml`` in the same folder.
            weights: checkpoint (ours or the reference layout), read by
                :func:`pixelclip.checkpoint.load_weights` (tensors only, strict); None = the
                checkpoint path given as ``cfg_or_path``, else ``cfg.MODEL.WEIGHTS``; "" = none:
                plain CLIP of MODEL.CLIP.PRETRAINED (random weights when that is "", for tests).
            device: "cpu", "cuda", "cuda:1"...; None = ``cfg.MODEL.DEVICE``, or the CPU when
                that asks for CUDA on a machine without it.
            vocabulary: an initial vocabulary (see :func:`parse_vocabulary`); None keeps the
                config's MODEL.PIXELCLIP.TEST.VOCABULARY / VOCABULARY_FILE.
            input_format: channel order of numpy arrays given to ``__call__``: "RGB" (default)
                or "BGR" (e.g. frames from ``cv2.imread`` / ``cv2.VideoCapture``). Independent
                of ``cfg.INPUT.FORMAT``, which is the order the model itself expects.
        """
        if input_format not in CHANNEL_ORDERS:
            raise ValueError(f"input_format {input_format!r}: choose from {list(CHANNEL_ORDERS)}")
        cfg, weights = _resolve_source(cfg_or_path, weights)
        if cfg.INPUT.FORMAT not in CHANNEL_ORDERS:
            raise ValueError(
                f"INPUT.FORMAT {cfg.INPUT.FORMAT!r}: the predictor supports {list(CHANNEL_ORDERS)}"
            )
        cfg.MODEL.DEVICE = _pick_device(device, cfg.MODEL.DEVICE)
        cfg.freeze()
        self.cfg = cfg
        self.input_format = input_format
        if weights:
            self.model = build_model_from_checkpoint(cfg, weights)
        else:
            self.model = build_model(cfg).eval()
            logger.warning(
                "no checkpoint given: the image tower is plain CLIP (MODEL.CLIP.PRETRAINED=%r), "
                "not fine-tuned by PixelCLIP",
                cfg.MODEL.CLIP.PRETRAINED,
            )
        self.resize = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def classes(self) -> list[str] | None:
        return list(self.model.vocabulary) if self.model.vocabulary else None

    def set_vocabulary(self, vocabulary) -> list[str]:
        """Use this vocabulary (see :func:`parse_vocabulary`) from now on; returns its names."""
        names = parse_vocabulary(vocabulary)
        if names != self.model.vocabulary:
            self.model.set_vocabulary(names)
        return names

    @torch.no_grad()
    def __call__(self, image, vocabulary=None) -> dict:
        """Segment one image.

        Args:
            image: a numpy uint8 array (H, W, 3) in ``self.input_format`` order (RGB by
                default), (H, W) grayscale, (H, W, 1) or (H, W, 4) (alpha dropped); or a
                ``PIL.Image``; or an image file path.
            vocabulary: the classes to segment (see :func:`parse_vocabulary`); None = the
                current one.

        Returns:
            dict with
              - "sem_seg": float32 (C, H, W) cosine scores on the CPU, at the original size;
              - "labels": int64 (H, W), the argmax over C;
              - "classes": the C class names, index-aligned with the scores.
        """
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)
        if not self.model.vocabulary:
            raise ValueError(
                "no vocabulary: pass one, e.g. predictor(image, 'cat, dog, grass'), or set "
                "MODEL.PIXELCLIP.TEST.VOCABULARY / VOCABULARY_FILE"
            )
        output = self.model([self.model_input(image)])[0]
        scores = output["sem_seg"].float().cpu()
        return {"sem_seg": scores, "labels": scores.argmax(0), "classes": self.classes}

    def model_input(self, image) -> dict:
        """The model's input dict for one image (the test resize and the model's channel order;
        "height"/"width" = the original size). ``image`` as for ``__call__``."""
        rgb = to_rgb_array(image, self.input_format)
        height, width = rgb.shape[:2]
        resized = self.resize.get_transform(rgb).apply_image(rgb)
        if self.cfg.INPUT.FORMAT == "BGR":
            resized = resized[:, :, ::-1]
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width}

    @torch.no_grad()
    def embedding_scores(self, image, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine scores of one image against any (C, D) unit embeddings instead of a
        vocabulary's (e.g. the learned prompts): float32 (C, H, W) on the CPU, original size."""
        return self.model.dense_scores([self.model_input(image)], embeddings)[0].float().cpu()
