"""ABCLIP: annotation bootstrapping over captions (method.md sections 4-6).

    L = L_CLIP(annotation batch) + ab_weight * L_AB(bootstrap batch)

- annotation l: a caption of the annotation batch (over all ranks), not paired with the
  bootstrap images, which may come from another, uncaptioned source (decoupled training);
- reward p(l | x'): the EMA model's CLIP image-to-caption softmax on the reached view x';
- psi_AB: a separate AB text head on the same text encoder;
- Q(l | x, a): softmax_l(t_AB * phi_AB(x, a) . psi_AB(l)), phi_AB from the value decoder;
- target: (1 - gamma) p_ema(l | x') + gamma AGG_a' Q_ema(l | x', a'), no gradient; with
  method.target_network=online the same from the online network's forward (momentum 0).
The published EMA rate is a constant 0.004 (method.ema_momentum = ema_momentum_end = 0.996).
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch

from annoboot import distributed
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
from annoboot.methods.clip import CLIP
from annoboot.models import Projector
from annoboot.objectives import caption_distribution, clip_loss


@register_method("ab_clip")
class ABCLIP(AnnotationBootstrapping, CLIP):
    config_options = AnnotationBootstrapping.options_with(CLIP.config_options)
    online_targets = True
    annotation_kind = "caption"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.uses_target = cfg.method.target_network == "ema"
        model = cfg.model
        self.value_function = ValueFunction(cfg, self.encoder.width, model.embed_dim)
        self.ab_text_head = Projector(model.text_width, model.text_width, model.embed_dim, batch_norm=False)  # psi_AB

    def annotation_keys(self, annotations: Sequence[str]) -> torch.Tensor:
        """psi_AB of captions: L strings -> (L, embed_dim)."""
        tokens = self.tokenizer(list(annotations)).to(self.normalize.mean.device)
        return self.ab_text_head(self.text_encoder(tokens))

    def training_step(self, batches: Dict[str, ImageBatch], target_network: Method | None, step: int = 0) -> StepOutput:
        m = self.cfg.method
        tokens = self.caption_tokens(batches["annotation"])
        num_annotations = tokens.shape[0]
        clip_views = self.image_views(batches["annotation"])
        boot_views, boxes = bootstrap_views(batches["bootstrap"], self.cfg, self.normalize)  # (N*V, ...), (N, V, 4)
        out = self.encoder(torch.cat([clip_views, boot_views]))  # one encoder call for both batches
        text_features = self.text_encoder(tokens)  # one text call for CLIP and psi_AB

        # Base loss: CLIP on the captioned annotation batch.
        scale = self.logit_scale()
        base_loss = clip_loss(
            self.embed_images(out.pooled[:num_annotations]), self.text_projection(text_features), scale, gather_distributed=True
        )

        # Q(l | x_s, a_{s->t}) for all view pairs; l ranges over every rank's captions.
        moves = self.value_function.moves(boxes)
        keys = distributed.gather_with_grad(self.ab_text_head(text_features))
        logits = self.value_function.logits(out.tokens[num_annotations:], moves, keys)
        with torch.no_grad():
            if target_network is None:  # method.target_network=online: this forward's features, no gradient
                td_targets = self.targets_from_features(out.pooled[num_annotations:], out.tokens[num_annotations:], text_features, moves)
            else:
                assert isinstance(target_network, ABCLIP), "ABCLIP's target network must be an ABCLIP"
                td_targets = target_network.td_targets(tokens, boot_views, moves)
        ab_loss, metrics = bootstrap_objective(logits, td_targets, boxes, m.drop_self_pairs)

        metrics.update({"loss/clip": base_loss.detach(), "clip/logit_scale": scale.detach()})
        return self.bootstrapped_step(base_loss, ab_loss, metrics, step)

    def td_targets(self, tokens: torch.Tensor, boot_views: torch.Tensor, moves: torch.Tensor) -> torch.Tensor:
        """Called on the EMA model: (1 - gamma) p(l | x_t) + gamma AGG Q(l | x_t, .) as (N, V, L)."""
        out = self.encoder(boot_views)
        return self.targets_from_features(out.pooled, out.tokens, self.text_encoder(tokens), moves)

    def targets_from_features(self, boot_pooled: torch.Tensor, boot_tokens: torch.Tensor, text_features: torch.Tensor,
                              moves: torch.Tensor) -> torch.Tensor:
        """TD targets from the bootstrap views' pooled features and tokens and the captions'
        text features, as (N, V, L)."""
        captions = distributed.gather(self.text_projection(text_features))
        reward = caption_distribution(self.embed_images(boot_pooled), captions, self.logit_scale())
        return ema_targets(self.cfg, reward, self.value_function, boot_tokens, moves,
                           lambda: distributed.gather(self.ab_text_head(text_features)))
