"""ABSimCLR: annotation bootstrapping on top of SimCLR (method.md sections 2-4).

    L = L_SimCLR(annotation batch) + ab_weight * L_AB(bootstrap batch)

- annotation l_i: an augmented view of annotation-batch image i;
- reward p(l | x'): the EMA model's SimCLR softmax of view x' over the annotation views;
- psi_AB: a separate head on the same encoder, applied to the annotation views;
- Q(l | x, a): softmax_l(t_AB * phi_AB(x, a) . psi_AB(l)), phi_AB from the value decoder;
- target: (1 - gamma) p_ema(l | x') + gamma AGG_a' Q_ema(l | x', a'), no gradient.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from annoboot.actions import action_tokens, box_iou, pairwise_relative_boxes, sample_crop_boxes
from annoboot.config import Config
from annoboot.data.base import ImageBatch
from annoboot.methods.base import Method, StepOutput
from annoboot.methods.simclr import SimCLR
from annoboot.models import LogitScale, Projector, ValueDecoder
from annoboot.objectives import agreement_by_iou, annotation_distribution, bootstrap_loss, nt_xent, td_target
from annoboot.views import render_views

# IoU buckets for the agreement health metric: no overlap, then growing overlap.
IOU_EDGES = (0.0, 1e-6, 0.2, 0.5, 0.8, 1.0001)
IOU_NAMES = ("0", "0-0.2", "0.2-0.5", "0.5-0.8", "0.8-1")


class ABSimCLR(SimCLR):
    uses_target = True

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        m, model = cfg.method, cfg.model
        width = model.decoder_dim or self.encoder.width
        self.value_decoder = ValueDecoder(
            token_width=self.encoder.width,
            width=width,
            depth=model.decoder_depth,
            num_heads=model.decoder_heads,
            num_bins=m.action_bins,
            out_dim=model.proj_dim,
            mlp_ratio=model.decoder_mlp_ratio,
        )
        self.ab_annotation_head = Projector(self.encoder.width, model.proj_hidden_dim, model.proj_dim)  # psi_AB
        self.ab_scale = LogitScale(m.ab_init_scale)  # t_AB

    def batch_sizes(self) -> Dict[str, int]:
        b, m = self.cfg.train.batch_size, self.cfg.method
        return {
            "annotation": max(2, round(b * m.annotation_fraction)),
            "bootstrap": max(1, round(b * m.bootstrap_fraction)),
        }

    def bootstrap_views(self, batch: ImageBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain crops (no flip, no colour): views (B*V, 3, S, S) image-major, boxes (B, V, 4)."""
        v = self.cfg.views
        boxes = sample_crop_boxes(batch.sizes, v.bootstrap_views, v.bootstrap_scale, v.crop_ratio)
        return self.normalize(render_views(batch, boxes, v.img_size)), boxes

    def value_logits(self, source_tokens: torch.Tensor, moves: torch.Tensor, annotation_pooled: torch.Tensor) -> torch.Tensor:
        """Q logits: source_tokens (N*V, T, D), moves (N, V, V, 4) int64 -> (N, V, V, L)."""
        n, v = moves.shape[:2]
        phi = F.normalize(self.value_decoder(source_tokens, moves.flatten(0, 1)), dim=-1)  # (N*V, V, d)
        psi = F.normalize(self.ab_annotation_head(annotation_pooled), dim=-1)  # (L, d)
        return (self.ab_scale() * phi @ psi.T).view(n, v, v, -1)

    def training_step(self, batches: Dict[str, ImageBatch], target: Method | None) -> StepOutput:
        assert isinstance(target, ABSimCLR), "ABSimCLR needs its EMA target network"
        m = self.cfg.method
        annotation, unlabeled = batches["annotation"], batches["bootstrap"]
        num_annotations, num_images = len(annotation), len(unlabeled)

        ann_views = self.annotation_views(annotation)  # (2A, ...): view 1 of all, then view 2
        boot_views, boxes = self.bootstrap_views(unlabeled)  # (N*V, ...)
        out = self.encoder(torch.cat([ann_views, boot_views]))
        ann_pooled = out.pooled[: 2 * num_annotations]
        boot_tokens = out.tokens[2 * num_annotations :]

        # Base loss: SimCLR on the annotation batch.
        z1, z2 = self.projector(ann_pooled).chunk(2)
        base_loss = nt_xent(z1, z2, m.temperature)

        # Bootstrap prediction Q(l | x_s, a_{s->t}) for all n x n view pairs in one decoder call.
        moves = action_tokens(pairwise_relative_boxes(boxes), m.action_bins, m.action_range)
        annotation_pooled = ann_pooled[:num_annotations]  # l_i := view 1 of annotation image i
        logits = self.value_logits(boot_tokens, moves, annotation_pooled)

        with torch.no_grad():
            targets = self.td_targets(target, ann_views[:num_annotations], boot_views, moves, num_images)
        ab_loss = bootstrap_loss(logits, targets, m.drop_self_pairs)

        loss = base_loss + m.ab_weight * ab_loss
        metrics = {
            "loss/simclr": base_loss.detach(),
            "loss/bootstrap": ab_loss.detach(),
            "ab/scale": self.ab_scale().detach(),
            "ab/target_entropy": -(targets * targets.clamp_min(1e-12).log()).sum(-1).mean(),
        }
        hits, counts = agreement_by_iou(logits.detach(), targets, box_iou(boxes[:, :, None], boxes[:, None, :]), IOU_EDGES)
        for name, h, c in zip(IOU_NAMES, hits, counts):
            metrics[f"ab_agreement_hits/iou_{name}"] = h
            metrics[f"ab_agreement_count/iou_{name}"] = c
        return StepOutput(loss, metrics)

    @staticmethod
    def td_targets(
        target: "ABSimCLR",
        annotation_views: torch.Tensor,
        boot_views: torch.Tensor,
        moves: torch.Tensor,
        num_images: int,
    ) -> torch.Tensor:
        """(1 - gamma) p_ema(l | x_t) + gamma AGG Q_ema(l | x_t, .): (N, V, L), from the EMA model."""
        m = target.cfg.method
        num_annotations = annotation_views.shape[0]
        out = target.encoder(torch.cat([annotation_views, boot_views]))
        z = target.projector(out.pooled)
        reward = annotation_distribution(z[num_annotations:], z[:num_annotations], m.temperature)
        reward = reward.view(num_images, -1, num_annotations)
        next_values = None
        if m.gamma > 0:
            logits = target.value_logits(out.tokens[num_annotations:], moves, out.pooled[:num_annotations])
            next_values = torch.softmax(logits.float(), dim=-1)
        return td_target(reward, next_values, m.gamma, m.aggregate)

