"""ABDINO: annotation bootstrapping over DINO's prototypes (method.md sections 2-4).

    L = L_DINO(annotation batch) + ab_weight * L_AB(bootstrap batch)

- annotation l_k: DINO prototype k of K;
- reward p(l | x'): the EMA teacher's centred, sharpened distribution on the reached view x';
- psi_AB: a learned embedding per prototype (K, d), separate from the DINO head's last layer;
- Q(l | x, a): softmax_l(t_AB * phi_AB(x, a) . psi_AB(l)), phi_AB from the value decoder;
- target: (1 - gamma) p_ema(l | x') + gamma AGG_a' Q_ema(l | x', a'), no gradient.

The bootstrap views are plain crops at the global size, separate from the multi-crop views, so
the value decoder is always given their true relative boxes.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

from annoboot.batch import ImageBatch
from annoboot.config import Config
from annoboot.methods.base import Method, StepOutput, register_method
from annoboot.methods.bootstrapping import (
    AnnotationBootstrapping,
    ValueFunction,
    bootstrap_objective,
    bootstrap_views,
    ema_targets,
)
from annoboot.methods.dino import DINO
from annoboot.objectives import teacher_distribution


@register_method("ab_dino")
class ABDINO(AnnotationBootstrapping, DINO):
    config_options = AnnotationBootstrapping.options_with(DINO.config_options)
    annotation_kind = "prototype"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        model = cfg.model
        self.value_function = ValueFunction(cfg, self.encoder.width, model.dino_bottleneck_dim)
        self.ab_prototypes = nn.Parameter(torch.empty(model.dino_prototypes, model.dino_bottleneck_dim))  # psi_AB
        nn.init.trunc_normal_(self.ab_prototypes, std=0.02)

    def annotation_keys(self, annotations: None = None) -> torch.Tensor:
        """psi_AB of the K prototypes: (K, bottleneck), ABDINO's own embeddings."""
        return self.ab_prototypes

    def training_step(self, batches: Dict[str, ImageBatch], target_network: Method | None, step: int = 0) -> StepOutput:
        assert isinstance(target_network, ABDINO), "ABDINO needs its EMA target network"
        m = self.cfg.method
        global_views, local_views = self.multicrop_views(batches["annotation"])
        boot_views, boxes = bootstrap_views(batches["bootstrap"], self.cfg, self.normalize)  # (N*V, ...), (N, V, 4)
        num_global = global_views.shape[0]
        out = self.encoder(torch.cat([global_views, boot_views]))  # one call for every view at the global size
        student_local = self.encoder(local_views).pooled
        moves = self.value_function.moves(boxes)
        teacher_temp = self.current_teacher_temp(step)
        with torch.no_grad():
            teacher_logits, td_targets = target_network.teacher_outputs(global_views, boot_views, moves, teacher_temp)

        base_loss, metrics = self.dino_objective(out.pooled[:num_global], student_local, teacher_logits, step)
        logits = self.value_function.logits(out.tokens[num_global:], moves, self.ab_prototypes)  # (N, V, V, K)
        ab_loss, ab_metrics = bootstrap_objective(logits, td_targets, boxes, m.drop_self_pairs)

        metrics.update(ab_metrics)
        return self.bootstrapped_step(base_loss, ab_loss, metrics, step)

    def teacher_outputs(
        self, global_views: torch.Tensor, boot_views: torch.Tensor, moves: torch.Tensor, teacher_temp: float
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Called on the EMA model, in one encoder call.

        Returns the prototype logits of the global views (2A, K) for DINO, and the TD targets
        (1 - gamma) p(l | x_t) + gamma AGG Q(l | x_t, .) of the bootstrap views as (N, V, K).
        """
        num_global = global_views.shape[0]
        out = self.encoder(torch.cat([global_views, boot_views]))
        logits = self.head(out.pooled)
        # The centre is this EMA copy's, i.e. the online one before this step's update.
        reward = teacher_distribution(logits[num_global:], self.center, teacher_temp)
        td_targets = ema_targets(self.cfg, reward, self.value_function, out.tokens[num_global:], moves, lambda: self.ab_prototypes)
        return logits[:num_global], td_targets
