"""DINO (Caron et al. 2021): self-distillation between a student and its EMA teacher.

    L = mean_{t in globals, s in all views, s != t} H(P_teacher(x_t), P_student(x_s))

- student: the online encoder + DINO head on 2 global and n local crops (multi-crop);
- teacher: the EMA target of the whole method on the 2 global crops only; its distribution
  over the K prototypes is centred and sharpened (``objectives.teacher_distribution``);
- centre: a buffer of the online method updated every step from the teacher's logits, so the
  trainer copies it into the target and checkpoints it;
- schedules: the teacher temperature warms up here; EMA momentum, learning rate and weight
  decay follow the trainer; the prototypes get no update for ``freeze_last_layer_steps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from annoboot import distributed
from annoboot.actions import sample_crop_boxes
from annoboot.batch import ImageBatch
from annoboot.config import Config
from annoboot.errors import AnnobootError
from annoboot.methods.base import EMATargetOptions, Method, StepOutput, register_method
from annoboot.models import DINOHead, build_resizable_encoder
from annoboot.objectives import dino_loss, entropy, kl_to_uniform, teacher_distribution, update_center
from annoboot.option_ranges import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, PROBABILITY, option
from annoboot.views import Normalize, SimCLRAugment, render_view_major


@dataclass
class DINOOptions:
    """method.*: DINO's loss and teacher (ABDINO's reward uses the same teacher distribution)."""

    student_temp: float = option(0.1, POSITIVE)
    teacher_temp: float = option(0.07, POSITIVE)  # reached after the warm-up, then held
    teacher_temp_warmup: float = option(0.04, POSITIVE)  # starting value: a sharper teacher early avoids collapse
    teacher_temp_warmup_steps: int = option(1000, NON_NEGATIVE)  # linear warm-up length
    center_momentum: float = option(0.9, PROBABILITY)  # EMA of the teacher's batch-mean logits
    freeze_last_layer_steps: int = option(100, NON_NEGATIVE)  # DINO: the first epoch; prototypes get no update meanwhile


@dataclass
class DINOHeadOptions:
    """model.*: the DINO head, an MLP in -> hidden -> hidden -> bottleneck, then K prototypes."""

    dino_hidden_dim: int = option(2048, COUNT)
    dino_bottleneck_dim: int = option(256, COUNT)  # also the width of ABDINO's own prototype embeddings psi_AB
    dino_prototypes: int = option(4096, COUNT)  # K; the paper's 65,536 is sized for ImageNet, see the recipes


@dataclass
class MultiCropOptions:
    """views.*: DINO's multi-crop, 2 global crops at views.img_size and local crops at local_size."""

    global_scale: List[float] = option(factory=lambda: [0.4, 1.0], range=FRACTION)
    local_views: int = option(6, NON_NEGATIVE)
    local_scale: List[float] = option(factory=lambda: [0.05, 0.4], range=FRACTION)
    local_size: int = option(16, COUNT)  # DINO: 96 px locals for 224 px globals; keep the same ratio (~0.4-0.5)

    @staticmethod
    def check(cfg: Config, selected: bool) -> None:
        from annoboot.config import check_scale

        v = cfg.views
        check_scale("views.global_scale", v.global_scale)
        check_scale("views.local_scale", v.local_scale)
        if selected and not (v.local_views >= 1 and 0 < v.local_size <= v.img_size):
            raise AnnobootError(
                f"bad config: DINO needs 'views.local_views' >= 1 (got {v.local_views}) and "
                f"0 < 'views.local_size' <= 'views.img_size' (got {v.local_size} and {v.img_size})"
            )


def teacher_temperature(step: int, start: float, end: float, warmup_steps: int) -> float:
    """Linear from ``start`` at step 0 to ``end`` at ``warmup_steps``, then held at ``end``."""
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


@register_method("dino")
class DINO(Method):
    config_options = {"method": (DINOOptions, EMATargetOptions), "model": (DINOHeadOptions,), "views": (MultiCropOptions,)}
    uses_target = True

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        v, model = cfg.views, cfg.model
        self.encoder = build_resizable_encoder(model.backbone, v.img_size, model.backbone_kwargs)
        self.head = DINOHead(
            self.encoder.width, model.dino_hidden_dim, model.dino_bottleneck_dim, model.dino_prototypes
        )
        self.augment = SimCLRAugment(v.flip_prob, v.jitter_prob, v.jitter_strength, v.grayscale_prob)
        self.normalize = Normalize(v.mean, v.std)
        self.register_buffer("center", torch.zeros(model.dino_prototypes))

    def views_per_image(self) -> int:
        return 2 + self.cfg.views.local_views

    def current_teacher_temp(self, step: int) -> float:
        m = self.cfg.method
        return teacher_temperature(step, m.teacher_temp_warmup, m.teacher_temp, m.teacher_temp_warmup_steps)

    def multicrop_views(self, batch: ImageBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """2 global views (2B, 3, S, S) and n local views (nB, 3, s, s), each view-major."""
        v = self.cfg.views
        global_boxes = sample_crop_boxes(batch.sizes, 2, v.global_scale, v.crop_ratio)
        local_boxes = sample_crop_boxes(batch.sizes, v.local_views, v.local_scale, v.crop_ratio)
        global_views = self._augmented_views(batch, global_boxes, v.img_size)
        return global_views, self._augmented_views(batch, local_boxes, v.local_size)

    def _augmented_views(self, batch: ImageBatch, boxes: torch.Tensor, size: int) -> torch.Tensor:
        return self.normalize(self.augment(render_view_major(batch, boxes, size)))

    def teacher_logits(self, global_views: torch.Tensor) -> torch.Tensor:
        """Called on the EMA model: prototype logits (2B, K) of the global views."""
        return self.head(self.encoder(global_views).pooled)

    def training_step(self, batches: Dict[str, ImageBatch], target_network: Method | None, step: int = 0) -> StepOutput:
        assert isinstance(target_network, DINO), "DINO needs its EMA teacher"
        global_views, local_views = self.multicrop_views(batches["annotation"])
        student_global = self.encoder(global_views).pooled  # one call per crop size
        student_local = self.encoder(local_views).pooled
        with torch.no_grad():
            teacher_logits = target_network.teacher_logits(global_views)
        loss, metrics = self.dino_objective(student_global, student_local, teacher_logits, step)
        return StepOutput(loss, metrics)

    def dino_objective(
        self, student_global: torch.Tensor, student_local: torch.Tensor, teacher_logits: torch.Tensor, step: int
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The DINO loss and its collapse monitors; moves the centre towards this batch.

        student_global (2B, D), student_local (nB, D): pooled encoder features, view-major.
        teacher_logits (2B, K): the EMA model's head on the same global views.
        """
        m = self.cfg.method
        batch, num_prototypes = student_global.shape[0] // 2, teacher_logits.shape[-1]
        student_logits = self.head(torch.cat([student_global, student_local]))
        with torch.no_grad():
            teacher_probs = teacher_distribution(teacher_logits, self.center, self.current_teacher_temp(step))
            # The update is linear and the centre equal on all ranks: averaging the updated
            # centres over ranks gives the EMA of the global batch mean, as in DINO.
            new_center = update_center(self.center, teacher_logits, m.center_momentum)
            self.center.copy_(distributed.all_reduce_mean(new_center))
        loss = dino_loss(
            student_logits.view(-1, batch, num_prototypes), teacher_probs.view(2, batch, num_prototypes), m.student_temp
        )
        metrics = {
            "loss/dino": loss.detach(),
            # Collapse to uniform drives this to log K; to one-hot, to 0.
            "dino/teacher_entropy": entropy(teacher_probs).mean(),
            # Of the batch-mean distribution: log K when one prototype wins for every image.
            "dino/teacher_kl_uniform": kl_to_uniform(teacher_probs.mean(0)),
            # Across the batch, per dimension: 0 when every image maps to the same feature.
            "dino/student_feature_std": F.normalize(student_global.detach().float(), dim=-1).std(0).mean(),
            "dino/center_norm": self.center.norm(),
        }
        return loss, metrics

    def after_backward(self, step: int) -> None:
        # DINO keeps the prototypes still during the first epoch: moving them while the
        # student is untrained makes training unstable. No gradient also means no weight decay.
        if step < self.cfg.method.freeze_last_layer_steps:
            for param in self.head.last_layer.parameters():
                param.grad = None
