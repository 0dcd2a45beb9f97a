"""ABSimCLR: annotation bootstrapping on top of SimCLR (method.md sections 2-4).

    L = L_SimCLR(annotation batch) + ab_weight * L_AB(bootstrap batch)

- annotation l_i: an augmented view of annotation-batch image i;
- reward p(l | x'): the EMA model's SimCLR softmax of view x' over the annotation views;
- psi_AB: a separate head on the same encoder, applied to the annotation views;
- Q(l | x, a): softmax_l(t_AB * phi_AB(x, a) . psi_AB(l)), phi_AB from the value decoder;
- target: (1 - gamma) p_ema(l | x') + gamma AGG_a' Q_ema(l | x', a'), no gradient; with
  method.target_network=online the same from the online network's forward (momentum 0).
- asymmetric moves (views.bootstrap_source_views > 0, not in the paper): of the V bootstrap
  crops of an image, the first few are large source views (with gradient, the value decoder
  reads them) and the rest small target views (a forward without gradient for the reward), so
  every move leads from a wide view to a small region: Q(l | x_source, a_{source->target}).
- annotations from the targets (method.bootstrap_annotations=targets, not in the paper): the
  annotations of the bootstrap loss are the step's target crops themselves instead of the
  annotation batch's images; the reward of a target crop is its SimCLR softmax over all target
  crops, so a move must tell which crop it reaches, the other crops of the same image included.
  With method.bootstrap_annotations=image_targets the softmax and Q run over the crops of the
  move's own image only: what every crop of an image shares (its background) cannot score.
  With other_targets they run over the crops of every other image: a move scores only by
  which other images' regions its target resembles, never by its own image's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from annoboot import distributed
from annoboot.actions import shifted_boxes
from annoboot.batch import ImageBatch
from annoboot.config import Config, check_scale
from annoboot.errors import AnnobootError
from annoboot.methods.base import Method, StepOutput, register_method
from annoboot.methods.bootstrapping import (
    AnnotationBootstrapping,
    ValueFunction,
    bootstrap_objective,
    bootstrap_views,
    ema_targets,
    frozen_statistics,
    sized_asymmetric_views,
)
from annoboot.methods.simclr import SimCLR
from annoboot.models import Projector, build_resizable_encoder, check_patch_multiple
from annoboot.objectives import annotation_distribution, nt_xent
from annoboot.option_ranges import FRACTION, NON_NEGATIVE, POSITIVE, PROBABILITY, option
from annoboot.views import quarter_turned


@dataclass
class AsymmetricMoveOptions:
    """views.*: asymmetric moves (ABSimCLR). 0 source views: every bootstrap view is the source
    and the target of a move to every other (the published recipe). S > 0: the first S of the
    ``bootstrap_views`` crops, drawn from ``bootstrap_source_scale``, are sources (gradient, value
    decoder); the other V - S, drawn from ``bootstrap_scale``, are targets only (reward from a
    forward without gradient): S x (V - S) moves per image, each from a wide view to a smaller one.
    bootstrap_target_rotation: each target view turned by a random multiple of 90 degrees, so the
    source view cannot predict what a target shows from a pattern it extends (a background's
    phase and orientation at the target), only from what the turn keeps.
    bootstrap_source_size: the side the source views are rendered at (0: views.img_size, like
    every other view). A wide source view at img_size shrinks the scene several times below
    its own resolution; a larger side keeps its regions at the scale an in-context probe reads
    them, for about (side / img_size)^2 the encoder cost of a source view.
    bootstrap_move_jitter: each move names its target's box shifted by a uniform random offset of
    up to this fraction of the box's width (x) and height (y); the reward is still the crop's own.
    A pattern the source view extends (a background grating's phase at the target) then cannot
    be read off where the move leads, while an item about the box's size stays mostly in it."""

    bootstrap_source_views: int = option(0, NON_NEGATIVE)
    bootstrap_source_scale: List[float] = option(factory=lambda: [0.5, 1.0], range=FRACTION)
    bootstrap_target_rotation: bool = False
    bootstrap_source_size: int = option(0, NON_NEGATIVE)
    bootstrap_move_jitter: float = option(0.0, PROBABILITY)

    @staticmethod
    def check(cfg: Config, selected: bool) -> None:
        v, m = cfg.views, cfg.method
        check_scale("views.bootstrap_source_scale", v.bootstrap_source_scale)
        if selected and v.bootstrap_target_rotation and v.bootstrap_source_views == 0:
            raise AnnobootError("bad config: key 'views.bootstrap_target_rotation' is true, which needs asymmetric "
                                "moves (views.bootstrap_source_views > 0): only target views are turned")
        if selected and v.bootstrap_move_jitter and v.bootstrap_source_views == 0:
            raise AnnobootError(f"bad config: key 'views.bootstrap_move_jitter' is {v.bootstrap_move_jitter:g}, which "
                                "needs asymmetric moves (views.bootstrap_source_views > 0): only moves to target "
                                "views are shifted")
        if selected and v.bootstrap_source_size and v.bootstrap_source_views == 0:
            raise AnnobootError(f"bad config: key 'views.bootstrap_source_size' is {v.bootstrap_source_size}, which "
                                "needs asymmetric moves (views.bootstrap_source_views > 0): only source views "
                                "are rendered at that size")
        if not selected or v.bootstrap_source_views == 0:
            return
        if not 0 < v.bootstrap_source_views < v.bootstrap_views:
            raise AnnobootError(f"bad config: key 'views.bootstrap_source_views' must be 0 or in [1, views.bootstrap_views - 1] "
                                f"= [1, {v.bootstrap_views - 1}], got {v.bootstrap_source_views}")
        if m.gamma != 0 or m.drop_self_pairs:
            raise AnnobootError("bad config: key 'views.bootstrap_source_views' > 0 (asymmetric moves) needs method.gamma=0 "
                                "and method.drop_self_pairs=false: target views are not sources, so they have no next moves "
                                "and no move to themselves")


@dataclass
class AnnotationQueueOptions:
    """method.*: a queue of past annotations (ABSimCLR). 0: the annotations are the step's
    annotation batch (published). K > 0: also the K most recent earlier annotation images, each
    kept as its reward embedding (the projector's output) and its psi_AB key, both without
    gradient; the queue fills over the first K / A steps. Online target only (a queue of EMA
    embeddings would go stale at the EMA's own pace)."""

    annotation_queue: int = option(0, NON_NEGATIVE)

    @staticmethod
    def check(cfg: Config, selected: bool) -> None:
        m = cfg.method
        if m.annotation_queue < 0:
            raise AnnobootError(f"bad config: key 'method.annotation_queue' must be >= 0, got {m.annotation_queue}")
        if selected and m.annotation_queue and m.target_network != "online":
            raise AnnobootError("bad config: key 'method.annotation_queue' > 0 needs method.target_network=online")
        per_step = round(cfg.train.batch_size * m.annotation_fraction)
        if selected and 0 < m.annotation_queue < per_step:
            raise AnnobootError(f"bad config: key 'method.annotation_queue' must hold at least one step's annotation "
                                f"images ({per_step}), got {m.annotation_queue}")


@dataclass
class BootstrapAnnotationOptions:
    """method.*: what the bootstrap loss's annotations are (ABSimCLR). batch: the annotation
    batch's images (published). targets: the step's target crops (asymmetric moves), gathered over
    ranks; the reward of target crop i is softmax_j(z_i . z_j / T) over them, psi_AB(l_j) the
    annotation head on crop j's pooled feature (no gradient into the encoder through the crops).
    Crops of one image share its background but show different items, so the moves of one
    source view must be told apart by what their regions show, not only by the image.
    image_targets: the same, with the reward and Q over the target crops of the move's own image
    only (the restriction of that softmax, renormalised; nothing gathered over ranks), so
    nothing the crops of an image share can tell them apart. other_targets: the complement, the
    reward and Q over the target crops of every other image of the step (all ranks), so a crop
    is never rewarded for resembling the crops of its own image (which share its background).
    centred_annotations: with any of the three, each target crop's reward embedding minus the mean
    of its image's target crops before the softmax, so what all of an image's crops share (its
    background's overall look) does not decide which other crops a crop resembles; the keys of
    Q (psi_AB) are unchanged.
    reward_temperature: the temperature of the reward's softmax, with any annotations (None:
    method.temperature, SimCLR's own, as published). A higher one spreads a crop's reward over the
    annotations that look like it, where SimCLR's 0.1 puts nearly all of a target crop's reward
    on the crop itself: Q then learns which crops resemble what a move leads to, not only which
    crop it is. At 0.3 on the crowded scenes the reward went nearly flat and the branch added
    almost nothing (docs/method.md 4b)."""

    bootstrap_annotations: str = "batch"
    centred_annotations: bool = False
    reward_temperature: Optional[float] = option(None, POSITIVE)

    CHOICES: ClassVar[Dict[str, Tuple[str, ...]]] = {"bootstrap_annotations": ("batch", "targets", "image_targets",
                                                                                "other_targets")}

    @staticmethod
    def check(cfg: Config, selected: bool) -> None:
        m = cfg.method
        if selected and m.centred_annotations and (m.bootstrap_annotations == "batch"
                                                   or cfg.views.bootstrap_views - cfg.views.bootstrap_source_views < 2):
            raise AnnobootError("bad config: key 'method.centred_annotations' is true, which needs "
                                "method.bootstrap_annotations targets, image_targets or other_targets (got "
                                f"'{m.bootstrap_annotations}') and at least 2 target crops an image "
                                "(views.bootstrap_views - views.bootstrap_source_views): a crop is centred on "
                                "its image's target crops")
        if not selected or m.bootstrap_annotations == "batch":
            return
        if cfg.views.bootstrap_source_views == 0 or m.target_network != "online" or m.annotation_queue:
            raise AnnobootError(f"bad config: key 'method.bootstrap_annotations' is '{m.bootstrap_annotations}', "
                                "which needs asymmetric moves (views.bootstrap_source_views > 0), "
                                "method.target_network=online and no method.annotation_queue: the annotations "
                                "are this step's target crops")


def own_image_columns(num_images: int, crops: int, device: torch.device) -> torch.Tensor:
    """(N, crops, L) bool: True where column l of the step's target crops gathered over ranks
    (L = ranks x N x crops, rank-major, then image-major) is a crop of this rank's image n."""
    per_rank = num_images * crops
    first = distributed.rank() * per_rank + torch.arange(num_images, device=device)[:, None] * crops
    columns = torch.arange(distributed.world_size() * per_rank, device=device)
    own = (columns >= first) & (columns < first + crops)  # (N, L)
    return own[:, None].expand(num_images, crops, columns.shape[0])


# Q's logit for a left-out annotation: exp underflows to 0 in bf16 and fp32, and it stays finite,
# so the cross-entropy's 0 x log q is 0, not NaN.
EXCLUDED_LOGIT = -1e4


def same_image_block(scores: torch.Tensor) -> torch.Tensor:
    """(N, S, V, N * V) scores of every move against every target crop of the step (image-major)
    -> (N, S, V, V): each image's moves against that image's own crops."""
    n, s, v = scores.shape[:3]
    return torch.diagonal(scores.view(n, s, v, n, v), dim1=0, dim2=3).movedim(-1, 0)


@register_method("ab_simclr")
class ABSimCLR(AnnotationBootstrapping, SimCLR):
    config_options = AnnotationBootstrapping.options_with(
        SimCLR.config_options,
        {"views": (AsymmetricMoveOptions,), "method": (AnnotationQueueOptions, BootstrapAnnotationOptions)})
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
        if self.source_size != cfg.views.img_size:  # source views of another size: a ViT interpolates
            self.encoder = build_resizable_encoder(model.backbone, cfg.views.img_size, model.backbone_kwargs)
            check_patch_multiple(self.encoder, "views.bootstrap_source_size", self.source_size)
        self.value_function = ValueFunction(cfg, self.encoder.width, model.proj_dim)
        self.ab_annotation_head = Projector(self.encoder.width, model.proj_hidden_dim, model.proj_dim, model.projector_bn)  # psi_AB
        if cfg.method.annotation_queue:  # ring buffers; step t writes rows [t * A, (t + 1) * A) mod K
            self.register_buffer("queue_embeddings", torch.zeros(cfg.method.annotation_queue, model.proj_dim))
            self.register_buffer("queue_keys", torch.zeros(cfg.method.annotation_queue, model.proj_dim))
        self._step_annotations = None  # this step's reward embeddings of its annotations, to enqueue
        self._to_enqueue = None

    @property
    def source_size(self) -> int:
        """The side of the source views (asymmetric moves): views.bootstrap_source_size or img_size."""
        return self.cfg.views.bootstrap_source_size or self.cfg.views.img_size

    @property
    def min_bootstrap_images(self) -> int:
        # other_targets: a move's annotations are the other images' crops, so one image has none
        return 2 if self.cfg.method.bootstrap_annotations == "other_targets" else 1

    def annotation_keys(self, annotations: torch.Tensor) -> torch.Tensor:
        """psi_AB of annotation images: views (L, 3, S, S) in [0, 1] -> (L, proj_dim)."""
        pooled = torch.cat([self.encoder(self.normalize(chunk)).pooled for chunk in annotations.split(256)])
        return self.ab_annotation_head(pooled)

    def training_step(self, batches: Dict[str, ImageBatch], target_network: Method | None, step: int = 0) -> StepOutput:
        m, v = self.cfg.method, self.cfg.views
        num_annotations = len(batches["annotation"])
        sources = v.bootstrap_source_views  # 0: every view a source and a target
        ann_views = self.annotation_views(batches["annotation"])  # (2A, ...): view 1 of all, then view 2
        if sources and self.source_size != v.img_size:  # sources and targets of two sizes
            source_views, target_views, boxes = sized_asymmetric_views(batches["bootstrap"], self.cfg, self.normalize,
                                                                       self.source_size)
        else:
            boot_views, boxes = bootstrap_views(batches["bootstrap"], self.cfg, self.normalize, sources,
                                                v.bootstrap_source_scale)  # (N*V, ...)
            source_views, target_views = boot_views, boot_views
            if sources:
                per_image = boot_views.unflatten(0, (boxes.shape[0], boxes.shape[1]))
                source_views, target_views = per_image[:, :sources].flatten(0, 1), per_image[:, sources:].flatten(0, 1)
        source_boxes, target_boxes = (boxes[:, :sources], boxes[:, sources:]) if sources else (boxes, None)
        if sources and v.bootstrap_target_rotation:
            target_views = quarter_turned(target_views)
        if source_views.shape[-1] == ann_views.shape[-1]:
            out = self.encoder(torch.cat([ann_views, source_views]))  # one encoder call for both batches
            ann_pooled, source_pooled = out.pooled.split([2 * num_annotations, source_views.shape[0]])
            source_tokens = out.tokens[2 * num_annotations :]
        else:  # larger source views (views.bootstrap_source_size): a call of their own
            ann_pooled = self.encoder(ann_views).pooled
            source_out = self.encoder(source_views)
            source_pooled, source_tokens = source_out.pooled, source_out.tokens
        # views.bootstrap_move_jitter: the moves name shifted boxes; the targets stay where they are
        move_boxes = shifted_boxes(boxes[:, sources:], v.bootstrap_move_jitter)
        moves = self.value_function.moves_between(source_boxes, move_boxes)
        own = None  # other_targets: (N, V - S, L) the columns of each move's own image, left out
        if m.bootstrap_annotations == "other_targets":
            own = own_image_columns(moves.shape[0], moves.shape[2], moves.device)
        with torch.no_grad():
            if target_network is None:  # method.target_network=online: this forward's features, no gradient
                if sources:
                    target_out = self.encoder(target_views)
                    target_pooled, target_tokens = target_out.pooled, target_out.tokens
                else:
                    target_pooled, target_tokens = source_pooled.detach(), source_tokens.detach()
                # Before the base loss's projector call updates the BatchNorm statistics: the
                # reward then normalises as a target holding this step's weights would.
                with frozen_statistics(self):
                    if m.bootstrap_annotations != "batch":  # the target crops' reward embeddings
                        z = self.target_embeddings(target_pooled, moves.shape[0])
                    if m.bootstrap_annotations in ("targets", "other_targets"):  # each crop's softmax over them
                        excluded = None if own is None else own.flatten(0, 1)  # ... but its own image's
                        reward = annotation_distribution(z, distributed.gather(z), self.reward_temperature, excluded)
                        td_targets = reward.view(moves.shape[0], moves.shape[2], -1)  # (N, V - S, L)
                    elif m.bootstrap_annotations == "image_targets":  # ... over its own image's crops
                        reward = same_image_block(annotation_distribution(z, z, self.reward_temperature).view(
                            moves.shape[0], 1, moves.shape[2], -1))[:, 0]  # (N, V - S, V - S)
                        td_targets = reward / reward.sum(-1, keepdim=True)
                    else:
                        pooled = torch.cat([ann_pooled[:num_annotations], target_pooled])
                        td_targets = self.targets_from_features(pooled, target_tokens, num_annotations, moves, step)
            else:
                assert isinstance(target_network, ABSimCLR), "ABSimCLR's target network must be an ABSimCLR"
                td_targets = target_network.td_targets(ann_views[:num_annotations], target_views, moves)

        # Base loss: SimCLR on the annotation batch.
        z1, z2 = self.projector(ann_pooled).chunk(2)
        base_loss = nt_xent(z1, z2, m.temperature, gather_distributed=True)

        # Q(l | x_s, a_{s->t}) for every move from a source view to a target view; l_i := view 1
        # of annotation image i (or target crop i, bootstrap_annotations=targets), over all ranks;
        # with image_targets, over this rank's crops, each move scored against its own image's.
        annotated = ann_pooled[:num_annotations] if m.bootstrap_annotations == "batch" else target_pooled
        if m.bootstrap_annotations == "image_targets":
            keys = self.ab_annotation_head(annotated)
            logits = same_image_block(self.value_function.logits(source_tokens, moves, keys))
        else:
            keys = distributed.gather_with_grad(self.ab_annotation_head(annotated))
            if m.annotation_queue:
                self._to_enqueue = (self._step_annotations, keys.detach())  # written after backward (after_backward)
                keys = torch.cat([keys, self.queue_keys[: self.queue_filled(step, keys.shape[0])].to(keys.dtype)])
            logits = self.value_function.logits(source_tokens, moves, keys)
            if own is not None:
                logits = logits.masked_fill(own[:, None], EXCLUDED_LOGIT)  # (N, S, V - S, L)
        ab_loss, metrics = bootstrap_objective(logits, td_targets, source_boxes, m.drop_self_pairs, target_boxes)

        metrics["loss/simclr"] = base_loss.detach()
        return self.bootstrapped_step(base_loss, ab_loss, metrics, step)

    def target_embeddings(self, target_pooled: torch.Tensor, num_images: int) -> torch.Tensor:
        """The projector's embedding of each target crop (image-major); with
        method.centred_annotations its unit embedding minus the mean unit embedding of its image's
        target crops (the sphere is where SimCLR compares)."""
        z = self.projector(target_pooled)
        if not self.cfg.method.centred_annotations:
            return z
        per_image = F.normalize(z.float(), dim=-1).unflatten(0, (num_images, -1))
        return (per_image - per_image.mean(1, keepdim=True)).flatten(0, 1)

    def td_targets(self, annotation_views: torch.Tensor, boot_views: torch.Tensor, moves: torch.Tensor) -> torch.Tensor:
        """Called on the EMA model: (1 - gamma) p(l | x_t) + gamma AGG Q(l | x_t, .) as (N, V, L)
        for the target views ``boot_views`` (N*V, ...)."""
        num_annotations = annotation_views.shape[0]
        out = self.encoder(torch.cat([annotation_views, boot_views]))
        return self.targets_from_features(out.pooled, out.tokens[num_annotations:], num_annotations, moves)

    def targets_from_features(self, pooled: torch.Tensor, boot_tokens: torch.Tensor, num_annotations: int,
                              moves: torch.Tensor, step: int = 0) -> torch.Tensor:
        """TD targets from pooled features (the first ``num_annotations`` of annotation views,
        the rest of the bootstrap views) and the bootstrap views' tokens, as (N, V, L); with an
        annotation queue, L also counts the queued annotations (after the batch's)."""
        m = self.cfg.method
        z = self.projector(pooled)  # BatchNorm in eval mode: running statistics (see above)
        annotations = distributed.gather(z[:num_annotations])
        if m.annotation_queue:
            self._step_annotations = annotations
            queued = self.queue_embeddings[: self.queue_filled(step, annotations.shape[0])]
            annotations = torch.cat([annotations, queued.to(annotations.dtype)])
        reward = annotation_distribution(z[num_annotations:], annotations, self.reward_temperature)
        return ema_targets(self.cfg, reward, self.value_function, boot_tokens, moves,
                           lambda: distributed.gather(self.ab_annotation_head(pooled[:num_annotations])))

    @property
    def reward_temperature(self) -> float:
        """The reward softmax's temperature: method.reward_temperature, else SimCLR's."""
        m = self.cfg.method
        return m.temperature if m.reward_temperature is None else m.reward_temperature

    def queue_filled(self, step: int, per_step: int) -> int:
        """Queued annotations in use at ``step`` (0-based): every earlier step enqueued ``per_step``."""
        return min(self.cfg.method.annotation_queue, step * per_step)

    def after_backward(self, step: int) -> None:
        """Enqueue this step's annotations (reward embeddings, psi_AB keys), overwriting the oldest.
        After backward: the step's graph read the queue, so it changes only now."""
        if self._to_enqueue is None:
            return
        embeddings, keys = self._to_enqueue
        self._to_enqueue = None
        rows = (step * keys.shape[0] + torch.arange(keys.shape[0], device=keys.device)) % self.cfg.method.annotation_queue
        self.queue_embeddings[rows] = embeddings.to(self.queue_embeddings.dtype)
        self.queue_keys[rows] = keys.to(self.queue_keys.dtype)

