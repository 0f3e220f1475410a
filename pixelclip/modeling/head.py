"""The text side of PixelCLIP as a detectron2 semantic-segmentation head.

``PixelCLIPHead`` owns CLIP's frozen text tower, the learnable class prompts and the training-only
decoder. It turns dense image features into per-cluster cost maps and decoder logits (training,
docs/METHOD.md §5), and encodes vocabularies of class names for inference (§9).
"""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from .clip import create_clip_from_config
from .decoder import ConvHead
from .text import CLIPTextEncoder, LearnablePrompts
from .vocabulary import PROMPT_ENSEMBLES, VocabularyEmbedder, prompt_templates


@SEM_SEG_HEADS_REGISTRY.register()
class PixelCLIPHead(nn.Module):
    """Frozen CLIP text tower + learnable class prompts + training-only decoder.

    State-dict layout: ``text.*`` (open_clip's text-tower names), ``prompts.prompt_tokens``
    (k, l, W) and ``decoder.*`` (the reference ConvHead names).
    """

    @configurable
    def __init__(
        self,
        *,
        text_encoder: CLIPTextEncoder,
        prompts: LearnablePrompts,
        decoder: ConvHead,
        prompt_templates: tuple[str, ...] = PROMPT_ENSEMBLES["imagenet_select"],
        embedding_cache_dir: str = "",
        freeze_prompts: bool = False,
        fixed_class_names: tuple[str, ...] = (),
    ):
        """
        Args:
            text_encoder: CLIP's frozen text tower.
            prompts: the k learnable classes.
            decoder: the training-only decoder.
            prompt_templates: templates of the test-time prompt ensemble.
            embedding_cache_dir: disk cache of vocabulary embeddings ("" = memory only).
            freeze_prompts: ablation (MODEL.PROMPT.FROZEN): the prompts keep their random
                initial tokens.
            fixed_class_names: ablation (MODEL.PROMPT.CLASS_NAMES): the classes are these real
                names, encoded like a test vocabulary (with ``prompt_templates``) and fixed; the
                learnable prompts are then unused and frozen.
        """
        super().__init__()
        self.text = text_encoder
        self.prompts = prompts
        self.decoder = decoder
        self.prompt_templates = tuple(prompt_templates)
        self.vocabulary_embedder = VocabularyEmbedder(cache_dir=embedding_cache_dir or None)
        self.fixed_class_names = tuple(fixed_class_names)
        if self.fixed_class_names and len(self.fixed_class_names) != prompts.num_clusters:
            raise ValueError(
                f"MODEL.PROMPT.CLASS_NAMES has {len(self.fixed_class_names)} names but "
                f"MODEL.PROMPT.NUM_CLUSTERS is {prompts.num_clusters}; they must be equal"
            )
        if freeze_prompts or self.fixed_class_names:
            self.prompts.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        ensemble = cfg.MODEL.PIXELCLIP.TEST.PROMPT_ENSEMBLE
        try:
            templates = prompt_templates(ensemble)
        except ValueError as e:
            raise ValueError(f"MODEL.PIXELCLIP.TEST.PROMPT_ENSEMBLE: {e}") from None
        clip = create_clip_from_config(cfg)
        tokenizer = open_clip.get_tokenizer(cfg.MODEL.CLIP.MODEL_NAME)
        text_encoder = CLIPTextEncoder.from_clip(clip, tokenizer)
        return {
            "text_encoder": text_encoder,
            "prompts": LearnablePrompts(
                text_encoder=text_encoder,
                tokenizer=tokenizer,
                num_clusters=cfg.MODEL.PROMPT.NUM_CLUSTERS,
                length=cfg.MODEL.PROMPT.LENGTH,
                template=cfg.MODEL.PROMPT.TEMPLATE,
                seed=max(cfg.SEED, 0),
            ),
            "decoder": ConvHead(
                cfg.MODEL.PIXELCLIP.DECODER_CHANNELS,
                chunk_size=cfg.MODEL.PIXELCLIP.DECODER_CHUNK_SIZE,
            ),
            "prompt_templates": templates,
            "embedding_cache_dir": cfg.MODEL.PIXELCLIP.TEST.EMBEDDING_CACHE_DIR,
            "freeze_prompts": cfg.MODEL.PROMPT.FROZEN,
            "fixed_class_names": tuple(cfg.MODEL.PROMPT.CLASS_NAMES),
        }

    def prompt_embeddings(self) -> torch.Tensor:
        """Text embeddings f_C of the learnable classes, (k, D), unnormalised, with gradients
        (fixed and unit-norm in the class-name ablation)."""
        if self.fixed_class_names:
            return self.class_embeddings(list(self.fixed_class_names))
        return self.prompts(self.text)

    def forward(self, features: torch.Tensor, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """Decoder logits of every class.

        Args:
            features: student dense features (B, D, h, w), unnormalised.
            prompt_embeddings: f_C (k, D), unnormalised; or (B, k, D), classes per image (the
                no-clustering ablation, where each mask's teacher embedding is its own class).

        Returns:
            (B, k, 4h, 4w) logits: the decoder applied to each cosine cost map (no temperature).

        The cosines are computed in float32 even under bf16 autocast (a few MFLOP): bf16 would
        round them to steps of 2^-9 near 0.3, coarse against the spread of the values the
        decoder reads; the decoder's stem takes them in float32 as well (ConvHead).
        """
        with torch.autocast(device_type=features.device.type, enabled=False):
            dtype = torch.promote_types(features.dtype, torch.float32)
            features = F.normalize(features.to(dtype), dim=1)
            classes = F.normalize(prompt_embeddings.to(dtype), dim=-1)
            if classes.dim() == 3:
                cost = torch.einsum("bdhw,bkd->bkhw", features, classes)
            else:
                cost = torch.einsum("bdhw,kd->bkhw", features, classes)
        return self.decoder(cost)

    def class_embeddings(self, class_names: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (C, D) of a vocabulary, with the prompt ensemble."""
        return self.vocabulary_embedder(self.text, class_names, self.prompt_templates)
