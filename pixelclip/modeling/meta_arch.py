"""The PixelCLIP meta-architecture: wiring of backbone, head, momentum teacher and clustering loss.

Training (docs/METHOD.md §4-§6), per step:
  1. the teacher is updated by EMA from the student image tower, then encodes the weak view;
  2. the masks of the batch are clustered online onto the learnable classes (Sinkhorn over all
     ranks) and turned into per-class binary targets;
  3. the student encodes the strong view; cosine cost maps against the class prompts go through
     the decoder; binary cross-entropy against the targets at the pixels covered by masks.
Inference (§9): dense features of the image against the text embeddings of a vocabulary of class
names that can be changed at run time (``set_vocabulary``); "whole" (the reference protocol) or
"slide" (sliding window) by config.
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from torch import nn

from .clustering import cluster_masks, own_mask_targets
from .loss import masked_bce_loss
from .teacher import MomentumTeacher
from .vocabulary import load_vocabulary

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
PROTOCOLS = ("whole", "slide")
MASK_SOURCES = ("sa1b", "dino")


def validate_config(cfg, stride: int) -> None:
    """Fail at build time, naming the key, on values the model cannot work with."""
    m, test = cfg.MODEL, cfg.MODEL.PIXELCLIP.TEST
    crop = test.SLIDE_CROP
    checks = [
        ("MODEL.PROMPT.NUM_CLUSTERS", m.PROMPT.NUM_CLUSTERS >= 2, ">= 2"),
        ("MODEL.PROMPT.LENGTH", m.PROMPT.LENGTH >= 1, ">= 1"),
        ("MODEL.PIXELCLIP.TEMPERATURE", m.PIXELCLIP.TEMPERATURE > 0, "> 0"),
        ("MODEL.PIXELCLIP.SINKHORN_ITERS", m.PIXELCLIP.SINKHORN_ITERS >= 1, ">= 1"),
        ("MODEL.PIXELCLIP.MOMENTUM", 0.0 <= m.PIXELCLIP.MOMENTUM <= 1.0, "in [0, 1]"),
        ("MODEL.PIXELCLIP.MASK_RESOLUTION", m.PIXELCLIP.MASK_RESOLUTION >= 1, ">= 1"),
        (
            "MODEL.CLIP.RESOLUTION",
            m.CLIP.RESOLUTION > 0 and m.CLIP.RESOLUTION % stride == 0,
            f"a positive multiple of the image tower's stride {stride}",
        ),
        (
            "MODEL.PIXELCLIP.PRECISION",
            m.PIXELCLIP.PRECISION in PRECISIONS,
            f"one of {list(PRECISIONS)}",
        ),
        ("MODEL.PIXELCLIP.TEST.PROTOCOL", test.PROTOCOL in PROTOCOLS, f"one of {list(PROTOCOLS)}"),
        (
            "MODEL.PIXELCLIP.TEST.SLIDE_CROP",
            crop > 0 and crop % stride == 0,
            f"a positive multiple of {stride}",
        ),
        (
            "MODEL.PIXELCLIP.TEST.SLIDE_STRIDE",
            0 < test.SLIDE_STRIDE <= crop,
            f"in (0, SLIDE_CROP={crop}]",
        ),
        (
            "INPUT.MASK_SOURCE",
            cfg.INPUT.MASK_SOURCE in MASK_SOURCES,
            f"one of {list(MASK_SOURCES)}",
        ),
    ]
    for key, ok, allowed in checks:
        if not ok:
            value = cfg
            for part in key.split("."):
                value = value[part]
            raise ValueError(f"invalid {key} = {value!r}; expected {allowed}")
    if (
        m.PIXELCLIP.PRECISION == "bf16"
        and torch.device(m.DEVICE).type == "cpu"
        and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    ):
        logger.warning(
            "MODEL.PIXELCLIP.PRECISION = 'bf16' on a CPU without bf16 instructions (AVX512-BF16 "
            "or AMX): bf16 is emulated here and runs several times slower than 'fp32' "
            "(docs/PERFORMANCE.md)"
        )


@META_ARCH_REGISTRY.register()
class PixelCLIP(nn.Module):
    """PixelCLIP (Shin et al., NeurIPS 2024, arXiv 2409.19846) on detectron2.

    Inputs follow detectron2's conventions: a list of dicts with "image" (uint8 (3, H, W), in
    ``input_format``) and, for training, "image_strong" (the student's view of the same crop),
    "masks" (bool (N, S, S) on the S x S mask grid, possibly N = 0) and "valid" (bool (S, S), False
    in the cutout). Training returns ``{"loss_masks": loss}``; inference returns one
    ``{"sem_seg": (C, height, width)}`` per input image, at the size given by its "height"/"width"
    (the original image size) or else the size of its "image".
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        teacher: MomentumTeacher | None,
        mask_generator: nn.Module | None = None,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
        input_format: str = "RGB",
        clip_resolution: int = 320,
        mask_resolution: int = 256,
        temperature: float = 100.0,
        sinkhorn_iters: int = 3,
        semantic_clustering: bool = True,
        precision: str = "fp32",
        test_protocol: str = "whole",
        test_feature_resolution: int = 64,
        slide_crop: int = 224,
        slide_stride: int = 112,
        vocabulary: list[str] | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.teacher = teacher
        self.mask_generator = mask_generator
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.input_format = input_format
        self.clip_resolution = clip_resolution
        self.mask_resolution = mask_resolution
        self.temperature = temperature
        self.sinkhorn_iters = sinkhorn_iters
        self.semantic_clustering = semantic_clustering
        self.autocast_dtype = PRECISIONS[precision]
        self.test_protocol = test_protocol
        self.test_feature_resolution = test_feature_resolution
        self.slide_crop = slide_crop
        self.slide_stride = slide_stride
        self.vocabulary: list[str] | None = None
        if vocabulary:
            self.set_vocabulary(vocabulary)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        validate_config(cfg, backbone.size_divisibility)
        head = build_sem_seg_head(cfg, backbone.output_shape())
        mask_generator = None
        if cfg.INPUT.MASK_SOURCE == "dino":
            from ..masks.dino import DinoMaskGenerator

            mask_generator = DinoMaskGenerator(
                model_name=cfg.MODEL.DINO.MODEL_NAME,
                weights=cfg.MODEL.DINO.WEIGHTS,
                num_clusters=cfg.MODEL.DINO.NUM_CLUSTERS,
                kmeans_iters=cfg.MODEL.DINO.KMEANS_ITERS,
                resolution=cfg.MODEL.DINO.RESOLUTION,
                seed=max(cfg.SEED, 0),
            )
        vocabulary = list(cfg.MODEL.PIXELCLIP.TEST.VOCABULARY)
        if cfg.MODEL.PIXELCLIP.TEST.VOCABULARY_FILE:
            try:
                vocabulary = load_vocabulary(cfg.MODEL.PIXELCLIP.TEST.VOCABULARY_FILE)
            except (ValueError, FileNotFoundError) as e:
                raise type(e)(f"MODEL.PIXELCLIP.TEST.VOCABULARY_FILE: {e}") from None
        return {
            "backbone": backbone,
            "sem_seg_head": head,
            "teacher": MomentumTeacher(backbone.encoder, momentum=cfg.MODEL.PIXELCLIP.MOMENTUM),
            "mask_generator": mask_generator,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "clip_resolution": cfg.MODEL.CLIP.RESOLUTION,
            "mask_resolution": cfg.MODEL.PIXELCLIP.MASK_RESOLUTION,
            "temperature": cfg.MODEL.PIXELCLIP.TEMPERATURE,
            "sinkhorn_iters": cfg.MODEL.PIXELCLIP.SINKHORN_ITERS,
            "semantic_clustering": cfg.MODEL.PIXELCLIP.SEMANTIC_CLUSTERING,
            "precision": cfg.MODEL.PIXELCLIP.PRECISION,
            "test_protocol": cfg.MODEL.PIXELCLIP.TEST.PROTOCOL,
            "test_feature_resolution": cfg.MODEL.PIXELCLIP.TEST.FEATURE_RESOLUTION,
            "slide_crop": cfg.MODEL.PIXELCLIP.TEST.SLIDE_CROP,
            "slide_stride": cfg.MODEL.PIXELCLIP.TEST.SLIDE_STRIDE,
            "vocabulary": vocabulary or None,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------------------ helpers
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) in ``input_format`` -> CLIP-normalised float (3, H, W), RGB order."""
        image = image.to(self.device, non_blocking=True).float()
        if self.input_format == "BGR":
            image = image.flip(0)
        return (image - self.pixel_mean) / self.pixel_std

    def _clip_input(self, images: list[torch.Tensor], size: int) -> torch.Tensor:
        """Normalise and squash every image to ``size`` x ``size`` (bilinear): (B, 3, S, S)."""
        shapes = {tuple(im.shape[-2:]) for im in images}
        if len(shapes) == 1:  # the usual case: one batched resize
            batch = torch.stack([self._normalize(im) for im in images])
            if shapes.pop() == (size, size):
                return batch
            return F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)
        return torch.cat(
            [
                F.interpolate(
                    self._normalize(im)[None],
                    size=(size, size),
                    mode="bilinear",
                    align_corners=False,
                )
                for im in images
            ]
        )

    # ----------------------------------------------------------------------------- forward
    def forward(self, batched_inputs: list[dict]):
        if self.training:
            return self.losses(batched_inputs)
        return self.inference(batched_inputs)

    def losses(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        """The clustering loss of one training batch (docs/METHOD.md §4-§6)."""
        size, grid = self.clip_resolution, self.mask_resolution
        weak = self._clip_input([x["image"] for x in batched_inputs], size)
        strong = self._clip_input([x.get("image_strong", x["image"]) for x in batched_inputs], size)
        valid = [x["valid"].to(self.device) if "valid" in x else None for x in batched_inputs]
        if self.mask_generator is not None:
            raw = torch.stack([x["image"].to(self.device) for x in batched_inputs])
            if self.input_format == "BGR":
                raw = raw.flip(1)
            masks = list(self.mask_generator(raw, out_size=grid))
        else:
            masks = [x["masks"].to(self.device) for x in batched_inputs]
        masks = [m if v is None else m & v for m, v in zip(masks, valid)]

        with torch.no_grad():
            self.teacher.update(self.backbone.encoder)
            with self._autocast():
                teacher_features = self.teacher(weak)
        channels = None
        with self._autocast():
            if self.semantic_clustering:
                class_embeddings = self.sem_seg_head.prompt_embeddings()
                targets, covered, _ = cluster_masks(
                    teacher_features.float(),
                    masks,
                    class_embeddings.detach().float(),
                    mask_resolution=grid,
                    temperature=self.temperature,
                    sinkhorn_iters=self.sinkhorn_iters,
                )
            else:  # ablation: each mask is its own class and target
                class_embeddings, targets, covered, channels = own_mask_targets(
                    teacher_features.float(), masks, mask_resolution=grid
                )
            features = self.backbone(strong)["clip"]
            logits = self.sem_seg_head(features, class_embeddings)
            logits = F.interpolate(logits, size=(grid, grid), mode="bilinear", align_corners=False)
        loss = masked_bce_loss(logits.float(), targets, covered, channels)
        return {"loss_masks": loss}

    # --------------------------------------------------------------------------- inference
    def set_vocabulary(self, class_names) -> None:
        """Use these class names from now on (a list, a JSON file or a dataset name)."""
        self.vocabulary = load_vocabulary(class_names)

    def vocabulary_for(self, dataset_name: str) -> None:
        """Use the ``stuff_classes`` of a registered dataset."""
        self.vocabulary = list(MetadataCatalog.get(dataset_name).stuff_classes)

    @torch.no_grad()
    def inference(self, batched_inputs: list[dict]) -> list[dict]:
        if not self.vocabulary:
            raise ValueError(
                "PixelCLIP has no vocabulary: call model.set_vocabulary([...]), or set "
                "MODEL.PIXELCLIP.TEST.VOCABULARY / VOCABULARY_FILE, or evaluate on a dataset whose "
                "metadata has stuff_classes"
            )
        classes = self.sem_seg_head.class_embeddings(self.vocabulary)
        return [{"sem_seg": score} for score in self.dense_scores(batched_inputs, classes)]

    @torch.no_grad()
    def dense_scores(self, batched_inputs: list[dict], classes: torch.Tensor) -> list[torch.Tensor]:
        """Cosine score maps of the test protocol (§9.2, §9.3) against any unit embeddings.

        ``inference`` calls it with the vocabulary's embeddings; the cluster analysis
        (``pixelclip.analysis``) with the k normalised prompt embeddings.

        Args:
            batched_inputs: test inputs as for ``inference`` ("image", optional "height"/"width").
            classes: (C, D) L2-normalised embeddings.

        Returns:
            One float32 (C, height, width) map per input, at its "height"/"width".
        """
        classes = classes.to(self.device)
        with self._autocast():
            if self.test_protocol == "whole":
                scores = self._whole(batched_inputs, classes)
            else:
                scores = [self._slide(x, classes) for x in batched_inputs]
        results = []
        for x, score in zip(batched_inputs, scores):
            height = x.get("height", x["image"].shape[-2])
            width = x.get("width", x["image"].shape[-1])
            score = F.interpolate(
                score[None].float(), size=(height, width), mode="bilinear", align_corners=False
            )
            results.append(score[0])
        return results

    def _cosine(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        features = F.normalize(features.float(), dim=1)
        return torch.einsum("bdhw,cd->bchw", features, classes.float())

    def _whole(self, batched_inputs: list[dict], classes: torch.Tensor) -> list[torch.Tensor]:
        """Reference protocol: square CLIP input, features bilinear to a fixed grid, cosine."""
        images = self._clip_input([x["image"] for x in batched_inputs], self.clip_resolution)
        features = self.backbone(images)["clip"]
        side = self.test_feature_resolution
        features = F.interpolate(
            features.float(), size=(side, side), mode="bilinear", align_corners=False
        )
        return list(self._cosine(features, classes))

    def _slide(self, x: dict, classes: torch.Tensor) -> torch.Tensor:
        """Sliding-window protocol of training-free peers (SCLIP, NACLIP): crops of ``slide_crop``
        every ``slide_stride`` pixels over the test image, per-crop cosine maps upsampled to the
        crop, overlapping scores averaged. Images smaller than a crop are padded (and the pad cut
        away again)."""
        image = self._normalize(x["image"])
        _, height, width = image.shape
        crop, step = self.slide_crop, self.slide_stride
        pad_h, pad_w = max(crop - height, 0), max(crop - width, 0)
        image = F.pad(image, (0, pad_w, 0, pad_h))
        full_h, full_w = image.shape[-2:]
        ys = list(range(0, full_h - crop, step)) + [full_h - crop]
        xs = list(range(0, full_w - crop, step)) + [full_w - crop]
        boxes = [(y, x0) for y in sorted(set(ys)) for x0 in sorted(set(xs))]
        windows = torch.stack([image[:, y : y + crop, x0 : x0 + crop] for y, x0 in boxes])
        features = self.backbone(windows)["clip"]
        scores = self._cosine(features, classes)
        total = scores.new_zeros((classes.shape[0], full_h, full_w))
        count = scores.new_zeros((1, full_h, full_w))
        for (y, x0), score in zip(boxes, scores):
            # one window at a time: never all (windows, C, crop, crop) upsampled scores at once
            score = F.interpolate(
                score[None], size=(crop, crop), mode="bilinear", align_corners=False
            )[0]
            total[:, y : y + crop, x0 : x0 + crop] += score
            count[:, y : y + crop, x0 : x0 + crop] += 1
        return (total / count)[:, :height, :width]
