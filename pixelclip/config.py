"""Configuration keys added by PixelCLIP on top of detectron2's defaults.

Every key has one comment stating its meaning and allowed values. The reference hyper-parameters
(docs/METHOD.md) are the defaults or live in ``configs/Base-PixelCLIP.yaml``.
"""

import os
from collections.abc import Sequence
from pathlib import Path

from detectron2.config import CfgNode as CN

# CLIP's normalisation constants on detectron2's 0-255 pixel scale.
CLIP_PIXEL_MEAN = [122.7709383, 116.7460125, 104.09373615]
CLIP_PIXEL_STD = [68.5005327, 66.6321579, 70.32316305]


def add_pixelclip_config(cfg: CN) -> None:
    """Add every PixelCLIP key (with its default) to a detectron2 config, in place."""
    cfg.MODEL.PIXEL_MEAN = list(CLIP_PIXEL_MEAN)
    cfg.MODEL.PIXEL_STD = list(CLIP_PIXEL_STD)

    # ---------------------------------------------------------------- CLIP (image and text towers)
    cfg.MODEL.CLIP = CN()
    # open_clip model name, e.g. "ViT-B-16", "ViT-L-14", "convnext_base_w_320", or a custom name
    # registered from MODEL_CONFIG.
    cfg.MODEL.CLIP.MODEL_NAME = "ViT-B-16"
    # Path of an open_clip model-config JSON to register before creating the model ("" = none);
    # used for small custom CLIPs (tests, ToyWorld).
    cfg.MODEL.CLIP.MODEL_CONFIG = ""
    # Pre-trained weights: an open_clip pretrained tag (e.g. "openai", needs network or cache), a
    # local file path (.pt/.pth/.bin/.safetensors), or "" for random initialisation.
    cfg.MODEL.CLIP.PRETRAINED = "openai"
    # Build the model with QuickGELU activations (required by OpenAI's CLIP weights).
    cfg.MODEL.CLIP.FORCE_QUICK_GELU = False
    # Folder where open_clip keeps downloaded weights ("" = open_clip's default).
    cfg.MODEL.CLIP.CACHE_DIR = ""
    # Side of the square image CLIP sees, in pixels (320 for ViT-B/16, 640 for ConvNeXt); must be a
    # multiple of the patch size / total stride.
    cfg.MODEL.CLIP.RESOLUTION = 320
    # Last-block readout of dense ViT features: "reference" (value path + class-token residual),
    # "maskclip" (value path, no residual), "sclip", "clearclip", "naclip". Ignored by ConvNeXt.
    cfg.MODEL.CLIP.DENSE_VARIANT = "reference"
    # Which image-tower parameters train: "attention" (ViT attention + positional embedding),
    # "full" (whole image tower), "none" (frozen).
    cfg.MODEL.CLIP.FINETUNE = "attention"
    # Recompute the student image tower's blocks in the backward pass instead of keeping their
    # activations: less memory (peak RSS of a ViT-B/16 step of 2 images on a 2-core CPU, fp32:
    # 3168 -> 2842 MiB), one more forward pass (5.7 -> 6.7 s there; docs/PERFORMANCE.md).
    cfg.MODEL.CLIP.GRAD_CHECKPOINTING = False

    # ------------------------------------------------------------------ learnable class prompts
    cfg.MODEL.PROMPT = CN()
    # Number k of learnable classes (clusters); >= 2.
    cfg.MODEL.PROMPT.NUM_CLUSTERS = 64
    # Number l of learnable token embeddings per class; >= 1.
    cfg.MODEL.PROMPT.LENGTH = 4
    # Template around the learnable tokens; its single "{}" is replaced by LENGTH placeholders.
    cfg.MODEL.PROMPT.TEMPLATE = "A photo of a {} in the scene"
    # Ablation: keep the prompts' random initial tokens (no prompt learning).
    cfg.MODEL.PROMPT.FROZEN = False
    # Ablation: fixed classes from these real names (encoded like a test vocabulary) instead of
    # learnable prompts; [] = learnable prompts. Must have NUM_CLUSTERS names.
    cfg.MODEL.PROMPT.CLASS_NAMES = []

    # --------------------------------------------------------------- training signal and inference
    cfg.MODEL.PIXELCLIP = CN()
    # Side of the square grid on which masks, teacher features and targets meet (pixels).
    cfg.MODEL.PIXELCLIP.MASK_RESOLUTION = 256
    # Multiplier (EPS) of mask-to-prompt cosines before Sinkhorn: 100 (ViT), 1 (ConvNeXt); > 0.
    cfg.MODEL.PIXELCLIP.TEMPERATURE = 100.0
    # Number of Sinkhorn-Knopp iterations; >= 1.
    cfg.MODEL.PIXELCLIP.SINKHORN_ITERS = 3
    # EMA factor gamma of the momentum teacher, in [0, 1].
    cfg.MODEL.PIXELCLIP.MOMENTUM = 0.999
    # Ablation switch: False = no semantic clustering; every mask is its own target and its own
    # class embedding is the teacher's mask-pooled feature (the prompts are not used in training).
    cfg.MODEL.PIXELCLIP.SEMANTIC_CLUSTERING = True
    # Numeric precision of forward passes: "fp32" or "bf16" (autocast, on CPU and CUDA).
    cfg.MODEL.PIXELCLIP.PRECISION = "fp32"
    # Channels of the training-only decoder's two stages (the reference uses 64 then 32).
    cfg.MODEL.PIXELCLIP.DECODER_CHANNELS = [64, 32]
    # Cost maps the decoder processes together under activation checkpointing (same result, less
    # memory; faster on CPU, see docs/PERFORMANCE.md); 0 = all maps at once, no checkpointing.
    cfg.MODEL.PIXELCLIP.DECODER_CHUNK_SIZE = 16
    # False: MODEL.WEIGHTS must match the model exactly (missing, unexpected, mis-shaped keys are
    # an error). True: load what matches and log every other key as a warning (fine-tuning from
    # a checkpoint of another setup).
    cfg.MODEL.PIXELCLIP.ALLOW_PARTIAL_WEIGHTS = False

    # ------------------------------------------------------------------------------ inference
    cfg.MODEL.PIXELCLIP.TEST = CN()
    # Inference protocol: "whole" (square CLIP input, the reference) or "slide" (sliding window).
    cfg.MODEL.PIXELCLIP.TEST.PROTOCOL = "whole"
    # Side of the grid dense features are upsampled to before the cosine ("whole" protocol).
    cfg.MODEL.PIXELCLIP.TEST.FEATURE_RESOLUTION = 64
    # Sliding-window crop side and stride in pixels ("slide" protocol).
    cfg.MODEL.PIXELCLIP.TEST.SLIDE_CROP = 224
    cfg.MODEL.PIXELCLIP.TEST.SLIDE_STRIDE = 112
    # Prompt ensemble for class names: "single", "imagenet_select" or "imagenet" (80 templates),
    # or one literal template with a single "{}", e.g. "a photo of a {}.".
    cfg.MODEL.PIXELCLIP.TEST.PROMPT_ENSEMBLE = "imagenet_select"
    # Vocabulary used at test time instead of the test dataset's stuff_classes: a list of class
    # names ("a, b" = synonyms of one class), or VOCABULARY_FILE, a JSON list of names. Both empty:
    # the dataset's metadata.
    cfg.MODEL.PIXELCLIP.TEST.VOCABULARY = []
    cfg.MODEL.PIXELCLIP.TEST.VOCABULARY_FILE = ""
    # Folder for the on-disk cache of class text embeddings ("" = no disk cache).
    cfg.MODEL.PIXELCLIP.TEST.EMBEDDING_CACHE_DIR = ""
    # How scores become predictions: "cosine" (argmax of the class cosines, docs/METHOD.md §9) or
    # "training_free" (NACLIP's: every name of a class its own query, softmax over queries of
    # LOGIT_SCALE x cosine, a class scored by its best name; pixelclip/inference/readout.py).
    cfg.MODEL.PIXELCLIP.TEST.READOUT = "cosine"
    cfg.MODEL.PIXELCLIP.TEST.LOGIT_SCALE = 40.0
    # Background threshold: on a benchmark whose class 0 is "background", pixels whose best class
    # probability ("training_free" readout) is below it become background; 0 = off.
    cfg.MODEL.PIXELCLIP.TEST.PROB_THRESHOLD = 0.0
    # PAMR refinement of the score maps at the original image size (pixelclip/inference/pamr.py):
    # number of steps (0 = off) and neighbourhood dilations in pixels.
    cfg.MODEL.PIXELCLIP.TEST.PAMR_STEPS = 0
    cfg.MODEL.PIXELCLIP.TEST.PAMR_DILATIONS = [8, 16]

    # ------------------------------------------------------------------- training data
    # Which masks train the model: "sa1b" (masks read from SA-1B-format JSON) or "dino" (k-means
    # of DINO features computed online).
    cfg.INPUT.MASK_SOURCE = "sa1b"
    # SSD-style photometric distortion of the weak view (as in Mask2Former), True/False.
    cfg.INPUT.COLOR_AUG_SSD = True
    # At most this many masks per image are kept (largest first); 0 = keep all.
    cfg.INPUT.MAX_MASKS_PER_IMAGE = 128
    # Strong view of the student (METHOD §8).
    cfg.INPUT.STRONG_AUG = CN()
    # Whether the student sees a strongly augmented view (False: the weak view itself).
    cfg.INPUT.STRONG_AUG.ENABLED = True
    # ColorJitter (brightness, contrast, saturation, hue) and its probability.
    cfg.INPUT.STRONG_AUG.COLOR_JITTER = [0.5, 0.5, 0.5, 0.25]
    cfg.INPUT.STRONG_AUG.COLOR_JITTER_PROB = 0.8
    # Probability of converting the strong view to grayscale.
    cfg.INPUT.STRONG_AUG.GRAYSCALE_PROB = 0.2
    # Gaussian blur sigma range and probability.
    cfg.INPUT.STRONG_AUG.BLUR_SIGMA = [0.1, 2.0]
    cfg.INPUT.STRONG_AUG.BLUR_PROB = 0.5
    # Cutout box side as a fraction of each image side, sampled in [min, max]; [0, 0] disables it.
    cfg.INPUT.STRONG_AUG.CUTOUT_SCALE = [0.1, 0.5]

    # DINO mask source (METHOD §8).
    cfg.MODEL.DINO = CN()
    # timm model name of the DINO ViT.
    cfg.MODEL.DINO.MODEL_NAME = "vit_small_patch16_224.dino"
    # Local weight file for the DINO ViT (.pth / .safetensors); "" = random weights (tests only).
    cfg.MODEL.DINO.WEIGHTS = ""
    # Number of k-means clusters (masks) per image; >= 2.
    cfg.MODEL.DINO.NUM_CLUSTERS = 16
    # Number of k-means iterations.
    cfg.MODEL.DINO.KMEANS_ITERS = 20
    # Side of the square image given to DINO, in pixels (multiple of 16); 640 = the reference grid.
    cfg.MODEL.DINO.RESOLUTION = 640

    # SA-1B location and subset.
    cfg.DATASETS.SA1B = CN()
    # Root folder of SA-1B ("" = $DETECTRON2_DATASETS/sa1b).
    cfg.DATASETS.SA1B.ROOT = ""
    # Text file listing the image ids (or relative paths) to use, one per line ("" = all found).
    cfg.DATASETS.SA1B.SUBSET = ""
    # Use at most this many images (0 = no cap).
    cfg.DATASETS.SA1B.MAX_IMAGES = 0
    # "" = the JSON next to each image; else a folder mirroring ROOT's tree (what
    # tools/generate_masks.py --output writes).
    cfg.DATASETS.SA1B.ANNOTATION_ROOT = ""
    # SA-1B tar shards: "a.tar::b.tar", "sa_{000000..000999}.tar", a folder, a .txt list; "" = ROOT
    cfg.DATASETS.SA1B.SHARDS = ""
    # Tar shards: decode at the resize for max(INPUT.MIN_SIZE_TRAIN), masks follow; True/False
    cfg.DATASETS.SA1B.DOWNSCALE = True

    # ------------------------------------------------------------------------------- solver
    # Optimizer: "ADAMW" (the reference) or "SGD" (with SOLVER.MOMENTUM).
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # Learning-rate multipliers of the parameter groups.
    cfg.SOLVER.CLIP_MULTIPLIER = 0.01
    cfg.SOLVER.PROMPT_MULTIPLIER = 10.0
    cfg.SOLVER.DECODER_MULTIPLIER = 1.0
    # Weight decay of nn.Embedding parameters (normalisation layers use WEIGHT_DECAY_NORM).
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0


# --------------------------------------------------------------------------- reading configs
# Keys that name input files or folders; relative values are made absolute when a config is read.
PATH_KEYS = (
    "MODEL.WEIGHTS",
    "MODEL.CLIP.PRETRAINED",  # also takes open_clip tags ("openai"): only existing paths change
    "MODEL.CLIP.MODEL_CONFIG",
    "MODEL.DINO.WEIGHTS",
    "MODEL.PIXELCLIP.TEST.VOCABULARY_FILE",
    "DATASETS.SA1B.ROOT",
    "DATASETS.SA1B.SUBSET",
    "DATASETS.SA1B.ANNOTATION_ROOT",
    "DATASETS.SA1B.SHARDS",  # a folder or list file; patterns are left as they are
)


def resolve_config_paths(cfg: CN, config_file: str | os.PathLike | None = None) -> None:
    """Make the relative paths of :data:`PATH_KEYS` absolute, in place (cfg must not be frozen).

    A relative path is looked up in the working directory first, then in the folder of
    ``config_file`` and each folder above it (so ``configs/clip_models/x.json`` in a config under
    ``configs/`` is found from anywhere); the first that exists wins. Paths found nowhere are left
    as they are, for the error of whoever reads them. The config that ``default_setup`` saves
    beside a run's checkpoints then works from any folder.
    """
    folders = [Path.cwd()]
    if config_file is not None:
        here = Path(config_file).resolve().parent
        folders += [here, *here.parents]
    for key in PATH_KEYS:
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        value = node[last]
        if not value or os.path.isabs(value) or "://" in value:
            continue
        for folder in folders:
            candidate = folder / os.path.expanduser(value)
            if candidate.exists():
                node[last] = str(candidate.resolve())
                break


def build_config(config_file: str | os.PathLike, opts: Sequence[str] = ()) -> CN:
    """The one way to make a config from a file: detectron2's defaults, the PixelCLIP keys, the
    YAML file (read safely, ``_BASE_`` included), ``KEY VALUE`` overrides, then absolute paths
    (:func:`resolve_config_paths`). Not frozen.

    Raises:
        FileNotFoundError, ValueError: the file is missing, refused, or has unknown keys.
    """
    from detectron2.config import get_cfg

    from .checkpoint.safe_io import merge_config_file

    path = os.fspath(config_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    merge_config_file(cfg, path)
    cfg.merge_from_list(list(opts))
    resolve_config_paths(cfg, path)
    return cfg
