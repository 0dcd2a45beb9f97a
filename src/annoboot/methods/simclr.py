"""SimCLR (Chen et al. 2020): two augmented views per image, NT-Xent between them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch

from annoboot.actions import sample_crop_boxes
from annoboot.batch import ImageBatch
from annoboot.config import Config
from annoboot.methods.base import Method, StepOutput, register_method
from annoboot.models import Projector, build_encoder
from annoboot.objectives import nt_xent
from annoboot.option_ranges import COUNT, POSITIVE, option
from annoboot.views import Normalize, SimCLRAugment, render_view_major


@dataclass
class SimCLROptions:
    """method.*: SimCLR's loss."""

    temperature: float = option(0.1, POSITIVE)  # NT-Xent softmax temperature (ABSimCLR's reward uses the same)


@dataclass
class ProjectorOptions:
    """model.*: the projection MLP on the pooled features (SimCLR; also ABSimCLR's psi_AB head)."""

    proj_hidden_dim: int = option(1024, COUNT)
    proj_dim: int = option(128, COUNT)
    # BatchNorm in the projectors (SyncBatchNorm under DDP on GPUs; per-process on CPU).
    projector_bn: bool = True


@register_method("simclr")
class SimCLR(Method):
    config_options = {"method": (SimCLROptions,), "model": (ProjectorOptions,)}
    min_annotation_images = 2  # one positive pair and at least one negative

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        v = cfg.views
        self.encoder = build_encoder(cfg.model.backbone, v.img_size, cfg.model.backbone_kwargs)
        self.projector = Projector(self.encoder.width, cfg.model.proj_hidden_dim, cfg.model.proj_dim, cfg.model.projector_bn)
        self.augment = SimCLRAugment(v.flip_prob, v.jitter_prob, v.jitter_strength, v.grayscale_prob)
        self.normalize = Normalize(v.mean, v.std)

    def views_per_image(self) -> int:
        return 2

    def annotation_views(self, batch: ImageBatch) -> torch.Tensor:
        """Two SimCLR views per image, view-major: (2B, 3, S, S), rows [0, B) are view 1."""
        v = self.cfg.views
        boxes = sample_crop_boxes(batch.sizes, 2, v.crop_scale, v.crop_ratio)
        return self.normalize(self.augment(render_view_major(batch, boxes, v.img_size)))

    def training_step(self, batches: Dict[str, ImageBatch], target_network: Method | None = None, step: int = 0) -> StepOutput:
        views = self.annotation_views(batches["annotation"])
        z = self.projector(self.encoder(views).pooled)
        z1, z2 = z.chunk(2)
        loss = nt_xent(z1, z2, self.cfg.method.temperature, gather_distributed=True)
        return StepOutput(loss, {"loss/simclr": loss.detach()})
