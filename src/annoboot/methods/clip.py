"""CLIP (Radford et al. 2021): images and their captions embedded together, symmetric InfoNCE."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import nn

from annoboot.actions import sample_crop_boxes
from annoboot.batch import ImageBatch
from annoboot.config import Config
from annoboot.errors import AnnobootError
from annoboot.methods.base import Method, StepOutput, register_method
from annoboot.models import CaptionTokenizer, LogitScale, TextEncoder, build_encoder
from annoboot.objectives import clip_loss
from annoboot.option_ranges import COUNT, FRACTION, POSITIVE, Range, option
from annoboot.views import Normalize, render_views


@dataclass
class CLIPOptions:
    """method.*: CLIP's loss, a learned logit scale (inverse temperature) capped at 100."""

    clip_init_temperature: float = option(0.07, POSITIVE)


@dataclass
class TextTowerOptions:
    """model.*: the text encoder, a causal transformer over CLIP BPE tokens (paper: size "S")."""

    text_width: int = option(512, COUNT)
    text_depth: int = option(6, COUNT)
    text_heads: int = option(8, COUNT)
    context_length: int = option(32, Range(3))  # tokens per caption, start/end included; longer ones are cut
    embed_dim: int = option(512, COUNT)  # joint image-text embedding (CLIP) and the AB text head's output


@dataclass
class CLIPViewOptions:
    """views.*: one crop per image from this scale range, no colour (open_clip's default)."""

    clip_scale: List[float] = option(factory=lambda: [0.9, 1.0], range=FRACTION)

    @staticmethod
    def check(cfg: Config, selected: bool) -> None:
        from annoboot.config import check_scale

        check_scale("views.clip_scale", cfg.views.clip_scale)


@register_method("clip")
class CLIP(Method):
    config_options = {"method": (CLIPOptions,), "model": (TextTowerOptions,), "views": (CLIPViewOptions,)}
    min_annotation_images = 2  # one positive pair and at least one negative
    embeds_text = True

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        model, v = cfg.model, cfg.views
        self.encoder = build_encoder(model.backbone, v.img_size, model.backbone_kwargs)
        self.image_projection = nn.Linear(self.encoder.width, model.embed_dim, bias=False)
        self.tokenizer = CaptionTokenizer(model.context_length)
        self.text_encoder = TextEncoder(
            self.tokenizer.vocab_size, model.context_length, model.text_width, model.text_depth, model.text_heads, self.tokenizer.end_id
        )
        self.text_projection = nn.Linear(model.text_width, model.embed_dim, bias=False)
        self.logit_scale = LogitScale(1.0 / cfg.method.clip_init_temperature)
        self.normalize = Normalize(v.mean, v.std)

    def views_per_image(self) -> int:
        return 1

    def needs_captions(self, stream: str) -> bool:
        return stream == "annotation"  # ABCLIP's bootstrap images may be uncaptioned

    def caption_tokenizer(self, stream: str) -> CaptionTokenizer | None:
        return self.tokenizer if self.needs_captions(stream) else None

    def caption_tokens(self, batch: ImageBatch) -> torch.Tensor:
        """(B, context_length) token ids of the batch's captions, on the batch's device: as the
        stream's workers tokenised them, or tokenised here when the batch came without."""
        if batch.caption_tokens is not None:
            return batch.caption_tokens
        if batch.captions is None:
            raise AnnobootError(
                f"method.name={self.cfg.method.name} needs captions, but data.annotation.kind="
                f"{self.cfg.data.annotation.kind} has none: use captioned_folder, openclipart, tuxpaint, "
                "fmnist_scenes or webdataset shards with .txt members"
            )
        return self.tokenizer(batch.captions).to(batch.images.device, non_blocking=True)

    def image_views(self, batch: ImageBatch) -> torch.Tensor:
        """One CLIP view per image (a large crop, no colour change): (B, 3, S, S) normalised."""
        v = self.cfg.views
        boxes = sample_crop_boxes(batch.sizes, 1, v.clip_scale, v.crop_ratio)
        return self.normalize(render_views(batch, boxes, v.img_size))

    def embed_images(self, pooled: torch.Tensor) -> torch.Tensor:
        """Encoder pooled features (B, width) -> joint embeddings (B, embed_dim), not normalised."""
        return self.image_projection(pooled)

    def embed_texts(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> joint embeddings (B, embed_dim), not normalised."""
        return self.text_projection(self.text_encoder(tokens))

    def training_step(self, batches: Dict[str, ImageBatch], target_network: Method | None = None, step: int = 0) -> StepOutput:
        batch = batches["annotation"]
        tokens = self.caption_tokens(batch)
        image_emb = self.embed_images(self.encoder(self.image_views(batch)).pooled)
        scale = self.logit_scale()
        loss = clip_loss(image_emb, self.embed_texts(tokens), scale, gather_distributed=True)
        return StepOutput(loss, {"loss/clip": loss.detach(), "clip/logit_scale": scale.detach()})
