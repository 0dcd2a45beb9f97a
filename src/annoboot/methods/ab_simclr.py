"""ABSimCLR: annotation bootstrapping on top of SimCLR (method.md sections 2-4).

    L = L_SimCLR(annotation batch) + ab_weight * L_AB(bootstrap batch)

- annotation l_i: an augmented view of annotation-batch image i;
- reward p(l | x'): the EMA model's SimCLR softmax of view x' over the annotation views;
- psi_AB: a separate head on the same encoder, applied to the annotation views;
- Q(l | x, a): softmax_l(t_AB * phi_AB(x, a) . psi_AB(l)), phi_AB from the value decoder;
- target: (1 - gamma) p_ema(l | x') + gamma AGG_a' Q_ema(l | x', a'), no gradient; with
  method.target_network=online the same from the online network's forward (momentum 0).
"""

from __future__ import annotations

from typing import Dict

import torch

from annoboot import distributed
from annoboot.batch import ImageBatch
from annoboot.config import Config
from annoboot.methods.base import Method, StepOutput, merge_options, register_method
from annoboot.methods.bootstrapping import (
    BOOTSTRAP_OPTIONS,
    ValueFunction,
    ab_batch_sizes,
    ab_loss_weight,
    bootstrap_objective,
    bootstrap_views,
    ema_targets,
    frozen_statistics,
)
from annoboot.methods.simclr import SimCLR
from annoboot.models import Projector
from annoboot.objectives import annotation_distribution, nt_xent


@register_method("ab_simclr")
class ABSimCLR(SimCLR):
    config_options = merge_options(SimCLR.config_options, BOOTSTRAP_OPTIONS)
    online_targets = True
    # The reward's BatchNorm uses the running statistics of the online projector, which
    # normalises annotation views only: a view's reward then depends on that view alone, not on
    # which bootstrap views share its batch (a batch of both would shift every reward).
    target_batch_statistics = False
    annotation_kind = "image"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.uses_target = cfg.method.target_network == "ema"
        model = cfg.model
        self.value_function = ValueFunction(cfg, self.encoder.width, model.proj_dim)
        self.ab_annotation_head = Projector(self.encoder.width, model.proj_hidden_dim, model.proj_dim, model.projector_bn)  # psi_AB

    def annotation_keys(self, annotations: torch.Tensor) -> torch.Tensor:
        """psi_AB of annotation images: views (L, 3, S, S) in [0, 1] -> (L, proj_dim)."""
        pooled = torch.cat([self.encoder(self.normalize(chunk)).pooled for chunk in annotations.split(256)])
        return self.ab_annotation_head(pooled)

    def batch_sizes(self) -> Dict[str, int]:
        return ab_batch_sizes(self.cfg, self.views_per_image())

    def training_step(self, batches: Dict[str, ImageBatch], target: Method | None, step: int = 0) -> StepOutput:
        m = self.cfg.method
        num_annotations = len(batches["annotation"])
        ann_views = self.annotation_views(batches["annotation"])  # (2A, ...): view 1 of all, then view 2
        boot_views, boxes = bootstrap_views(batches["bootstrap"], self.cfg, self.normalize)  # (N*V, ...)
        out = self.encoder(torch.cat([ann_views, boot_views]))  # one encoder call for both batches
        ann_pooled = out.pooled[: 2 * num_annotations]
        moves = self.value_function.moves(boxes)
        with torch.no_grad():
            if target is None:  # method.target_network=online: this forward's features, no gradient
                # Before the base loss's projector call updates the BatchNorm statistics: the
                # reward then normalises as a target holding this step's weights would.
                pooled = torch.cat([ann_pooled[:num_annotations], out.pooled[2 * num_annotations :]])
                with frozen_statistics(self):
                    targets = self.targets_from_features(pooled, out.tokens[2 * num_annotations :], num_annotations, moves)
            else:
                assert isinstance(target, ABSimCLR), "ABSimCLR's target network must be an ABSimCLR"
                targets = target.td_targets(ann_views[:num_annotations], boot_views, moves)

        # Base loss: SimCLR on the annotation batch.
        z1, z2 = self.projector(ann_pooled).chunk(2)
        base_loss = nt_xent(z1, z2, m.temperature, gather_distributed=True)

        # Q(l | x_s, a_{s->t}) for all view pairs; l_i := view 1 of annotation image i, over the
        # annotation batches of all ranks.
        keys = distributed.gather_with_grad(self.ab_annotation_head(ann_pooled[:num_annotations]))
        logits = self.value_function.logits(out.tokens[2 * num_annotations :], moves, keys)
        ab_loss, metrics = bootstrap_objective(logits, targets, boxes, m.drop_self_pairs)

        loss = base_loss + ab_loss_weight(self.cfg, step) * ab_loss
        metrics.update({"loss/simclr": base_loss.detach(), "ab/scale": self.value_function.scale().detach()})
        return StepOutput(loss, metrics)

    def td_targets(self, annotation_views: torch.Tensor, boot_views: torch.Tensor, moves: torch.Tensor) -> torch.Tensor:
        """Called on the EMA model: (1 - gamma) p(l | x_t) + gamma AGG Q(l | x_t, .) as (N, V, L)."""
        num_annotations = annotation_views.shape[0]
        out = self.encoder(torch.cat([annotation_views, boot_views]))
        return self.targets_from_features(out.pooled, out.tokens[num_annotations:], num_annotations, moves)

    def targets_from_features(self, pooled: torch.Tensor, boot_tokens: torch.Tensor, num_annotations: int,
                              moves: torch.Tensor) -> torch.Tensor:
        """TD targets from pooled features (the first ``num_annotations`` of annotation views,
        the rest of the bootstrap views) and the bootstrap views' tokens, as (N, V, L)."""
        m = self.cfg.method
        z = self.projector(pooled)  # BatchNorm in eval mode: running statistics (see above)
        annotations = distributed.gather(z[:num_annotations])
        reward = annotation_distribution(z[num_annotations:], annotations, m.temperature)
        return ema_targets(self.cfg, reward, self.value_function, boot_tokens, moves,
                           lambda: distributed.gather(self.ab_annotation_head(pooled[:num_annotations])))
