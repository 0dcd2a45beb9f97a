"""The parts every annotation-bootstrapping method shares (method.md sections 2-3).

A method ``AB<base>`` differs from another only in what an annotation is and what the reward
is; the value function over moves, the bootstrap views and the TD loss with its health metrics
live here:

    Q(l | x, a) = softmax_l(t_AB * phi_AB(x, a) . psi_AB(l))

with phi_AB the value decoder's output for move ``a`` from view ``x`` and psi_AB(l) the
annotation keys the method supplies (a head over annotation views, a prototype matrix, ...).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, fields
from typing import Callable, ClassVar, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from annoboot.actions import action_box, action_tokens, box_iou, move_region_mask, relative_box, sample_crop_boxes
from annoboot.batch import ImageBatch
from annoboot.config import Config
from annoboot.errors import AnnobootError
from annoboot.methods.base import EMATargetOptions, OptionSections, StepOutput, merge_options, rate_metric
from annoboot.models import LogitScale, RegionMeanReadout, ValueDecoder
from annoboot.objectives import agreement_by_iou, bootstrap_loss, td_target
from annoboot.objectives.precision import float32_matmul
from annoboot.option_ranges import BELOW_ONE, COUNT, FRACTION, NON_NEGATIVE, POSITIVE, PROBABILITY, Range, option
from annoboot.views import Normalize, render_views

log = logging.getLogger(__name__)

# IoU buckets for the agreement health metric: no overlap, then growing overlap.
IOU_EDGES = (0.0, 1e-6, 0.2, 0.5, 0.8, 1.0001)
IOU_NAMES = ("0", "0-0.2", "0.2-0.5", "0.5-0.8", "0.8-1")


@dataclass
class BootstrapOptions:
    """method.*: annotation bootstrapping, shared by every AB method."""

    ab_weight: float = option(1.0, NON_NEGATIVE)
    ab_weight_warmup: float = option(0.0, PROBABILITY)  # linear ramp of ab_weight from 0 over this fraction of train.steps
    gamma: float = option(0.0, BELOW_ONE)  # 0: the published recipe (reward only); > 0 bootstraps through Q_ema
    aggregate: str = "mean"  # mean | max (max renormalised over annotations)
    drop_self_pairs: bool = False
    # Split of the base batch B: annotation images = B * annotation_fraction (published: 1/2);
    # bootstrap images = B * bootstrap_fraction, or with None as many as make an AB step render as
    # many views as its base method's step (ABSimCLR: B/4 x 4 views; the published B/8 gives 25%
    # fewer views than SimCLR at the same B; ABDINO: B x 4; ABCLIP: B/8 x 4, as published).
    annotation_fraction: float = option(0.5, FRACTION)
    bootstrap_fraction: Optional[float] = option(None, FRACTION)
    action_bins: int = option(128, Range(2))
    action_range: float = option(6.0, POSITIVE)  # R: relative coordinates are clipped to [-R, R] before binning
    # false (ablation): the value decoder sees one constant move, so it can only predict the
    # average over moves (invariance); the paper's "no action tokens" row.
    action_tokens: bool = True
    ab_init_scale: float = option(10.0, POSITIVE)  # initial t_AB
    # ema: the reward (and Q for gamma > 0) come from the EMA target network, a second forward
    # of the target views, as published. online: from the online network's own forward of those
    # views, without gradient: the limit of momentum 0 (the target equals the online weights of
    # this step), which saves the second forward and the EMA copy (methods with online_targets).
    target_network: str = "ema"

    # gamma's range [0, 1) is checked with every declared range at load (option_ranges.BELOW_ONE).
    CHOICES: ClassVar[Dict[str, Tuple[str, ...]]] = {"aggregate": ("mean", "max"), "target_network": ("ema", "online")}


@dataclass
class ValueDecoderOptions:
    """model.*: the value decoder phi_AB(x, a) (models/value_decoder.py)."""

    decoder_depth: int = option(4, COUNT)
    decoder_dim: Optional[int] = option(None, COUNT)  # None: the encoder's width
    decoder_heads: int = option(4, COUNT)
    decoder_mlp_ratio: float = option(4.0, POSITIVE)
    # all: a move's query tokens read every token of the source view (published). target_box:
    # only the tokens inside the region the move leads to (the box its tokens name; every token
    # when that region is wholly outside the view), so the annotations there must be told by
    # the tokens of that region, in the context the encoder gave them (method.md 4b).
    decoder_attention: str = "all"
    # decoder: phi_AB from the value decoder above (published). region_mean: no decoder, phi_AB is
    # one linear map of the mean of the source tokens in the move's region (the region
    # target_box reads; the decoder_* options are then unused), so a move's annotations must be
    # told linearly by the pooled tokens of its region, as the in-context linear probe reads a box.
    value_readout: str = "decoder"

    CHOICES: ClassVar[Dict[str, Tuple[str, ...]]] = {"decoder_attention": ("all", "target_box"),
                                                     "value_readout": ("decoder", "region_mean")}

    @staticmethod
    def check(cfg: Config, selected: bool) -> None:
        # region_mean builds no decoder: say so when a decoder option was set, rather than train
        # silently without what the user asked for.
        if not selected or cfg.model.value_readout != "region_mean":
            return
        unused = [f"model.{f.name}={getattr(cfg.model, f.name)}" for f in fields(ValueDecoderOptions)
                  if f.name.startswith("decoder_") and getattr(cfg.model, f.name) != f.default]
        if unused:
            log.warning("model.value_readout=region_mean builds no value decoder, so %s %s unused",
                        ", ".join(unused), "is" if len(unused) == 1 else "are")


@dataclass
class BootstrapViewOptions:
    """views.*: the bootstrap views, plain crops with no flip or colour (method.md section 3)."""

    bootstrap_views: int = option(4, COUNT)
    bootstrap_scale: List[float] = option(factory=lambda: [0.05, 1.0], range=FRACTION)

    @staticmethod
    def check(cfg: Config, selected: bool) -> None:
        from annoboot.config import check_scale

        check_scale("views.bootstrap_scale", cfg.views.bootstrap_scale)
        if selected and cfg.views.bootstrap_views < 2:
            raise AnnobootError("bad config: 'views.bootstrap_views' must be >= 2 for annotation bootstrapping")


# What an AB method adds to its base method's options (``merge_options(Base.config_options, ...)``).
BOOTSTRAP_OPTIONS = {
    "method": (BootstrapOptions, EMATargetOptions),
    "model": (ValueDecoderOptions,),
    "views": (BootstrapViewOptions,),
}


class AnnotationBootstrapping:
    """What every AB<base> method adds to its base method, written once: the option classes, the
    split of the base batch into the two streams, and the closing sum of the step

        L = L_base(annotation batch) + ab_weight(step) * L_AB(bootstrap batch).

    Mixed in before the base: ``class ABSimCLR(AnnotationBootstrapping, SimCLR)``. The method
    file keeps only what differs: what an annotation is, the reward, psi_AB.
    """

    cfg: Config
    value_function: "ValueFunction"

    @staticmethod
    def options_with(base_options: OptionSections, *extra: OptionSections) -> OptionSections:
        """The base method's option classes, the bootstrap ones and ``extra``, each once."""
        return merge_options(base_options, BOOTSTRAP_OPTIONS, *extra)

    def batch_sizes(self) -> Dict[str, int]:
        return ab_batch_sizes(self.cfg, self.views_per_image())  # type: ignore[attr-defined]

    def bootstrapped_step(self, base_loss: torch.Tensor, ab_loss: torch.Tensor, metrics: Dict[str, torch.Tensor],
                          step: int) -> StepOutput:
        """The step's total loss and its metrics, with the value function's learned scale t_AB."""
        metrics["ab/scale"] = self.value_function.scale().detach()
        return StepOutput(base_loss + ab_loss_weight(self.cfg, step) * ab_loss, metrics)


class ValueFunction(nn.Module):
    """Q(l | x, a) over all n x n moves between the views of each image, in one decoder call."""

    def __init__(self, cfg: Config, token_width: int, annotation_dim: int):
        super().__init__()
        m, model = cfg.method, cfg.model
        self.num_bins, self.value_range = m.action_bins, m.action_range
        self.use_moves = m.action_tokens
        region_mean = model.value_readout == "region_mean"
        # Whether each move reads only its region's tokens: the region-mean readout always does.
        self.attend_to_target = region_mean or model.decoder_attention == "target_box"
        self.region_option = "model.value_readout=region_mean" if region_mean else "model.decoder_attention=target_box"
        self.decoder: nn.Module = RegionMeanReadout(token_width, annotation_dim) if region_mean else ValueDecoder(
            token_width=token_width,
            width=model.decoder_dim or token_width,
            depth=model.decoder_depth,
            num_heads=model.decoder_heads,
            num_bins=m.action_bins,
            out_dim=annotation_dim,
            mlp_ratio=model.decoder_mlp_ratio,
        )
        self.scale = LogitScale(m.ab_init_scale)  # t_AB
        # The largest |relative coordinate| of the moves tokenised so far, kept on the device and
        # read only by check_move_range (no host sync per step); None before the first move.
        self.largest_move: Optional[torch.Tensor] = None

    def move_tokens(self, relative_boxes: torch.Tensor) -> torch.Tensor:
        """(..., 4) target boxes in their source view's frame -> (..., 4) action token ids."""
        tokens = action_tokens(relative_boxes, self.num_bins, self.value_range)
        if not self.use_moves:  # ablation: one constant move, so Q predicts the average over moves
            return torch.zeros_like(tokens)
        # Crops of non-square images are narrow along the long side, so their moves reach
        # further than on squares (16:9 past the default R = 6): watched, as they would be clipped.
        reach = relative_boxes.detach().abs().amax().float()
        self.largest_move = reach if self.largest_move is None else torch.maximum(self.largest_move, reach)
        return tokens

    def check_move_range(self, largest_move: float) -> None:
        """Refuse to go on when a move reached past method.action_range: its coordinates were
        clipped into the edge bins, so moves of different lengths became one token."""
        if largest_move > self.value_range:
            raise AnnobootError(
                f"bad config: key 'method.action_range' is {self.value_range:g}, but moves between bootstrap crops "
                f"reach {largest_move:.2f} (crops of non-square images are narrow along the long side) and were "
                f"clipped; set method.action_range={math.ceil(largest_move * 10) / 10:g} or more")

    def moves(self, boxes_xyxy: torch.Tensor) -> torch.Tensor:
        """(N, V, 4) view boxes -> (N, V_source, V_target, 4) action token ids, all pairs."""
        return self.moves_between(boxes_xyxy, boxes_xyxy)

    def moves_between(self, source_xyxy: torch.Tensor, target_xyxy: torch.Tensor) -> torch.Tensor:
        """(N, S, 4) source boxes, (N, T, 4) target boxes -> (N, S, T, 4) action token ids."""
        return self.move_tokens(relative_box(source_xyxy[:, :, None, :], target_xyxy[:, None, :, :]))

    def memory_mask(self, moves: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """(R, V, 4) action token ids, ``num_tokens`` per source view -> (R, V, T) bool: the
        source tokens each move may read (decoder_attention=target_box, value_readout=region_mean)."""
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise AnnobootError(f"bad config: {self.region_option} needs source views whose tokens "
                                f"form a square grid, got {num_tokens} tokens per view")
        regions = action_box(moves.reshape(-1, 4), self.num_bins, self.value_range)
        return move_region_mask(regions, (side, side)).view(*moves.shape[:2], num_tokens)

    def score(self, phi: torch.Tensor, annotation_keys: torch.Tensor) -> torch.Tensor:
        """Decoder outputs phi_AB (..., d), annotation keys psi_AB (L, d) -> logits (..., L):
        t_AB times the cosine similarity, in float32."""
        phi = F.normalize(phi.float(), dim=-1)
        psi = F.normalize(annotation_keys.float(), dim=-1)
        return self.scale() * float32_matmul(phi, psi.T)

    def logits(self, source_tokens: torch.Tensor, moves: torch.Tensor, annotation_keys: torch.Tensor) -> torch.Tensor:
        """source_tokens (N*S, T, D) of the source views, moves (N, S, V, 4) from each source view
        to V target views, annotation_keys psi_AB (L, d) -> (N, S, V, L)."""
        n, s, v = moves.shape[:3]
        phi = self.values(source_tokens, moves.flatten(0, 1))  # (N*S, V, d)
        return self.score(phi, annotation_keys).view(n, s, v, -1)

    def values(self, source_tokens: torch.Tensor, moves: torch.Tensor) -> torch.Tensor:
        """phi_AB: source_tokens (R, T, D), moves (R, K, 4) from each source view -> (R, K, d), each
        move reading the source tokens that model.decoder_attention allows it."""
        mask = self.memory_mask(moves, source_tokens.shape[1]) if self.attend_to_target else None
        return self.decoder(source_tokens, moves, mask)


def ema_targets(
    cfg: Config,
    reward: torch.Tensor,
    value_function: ValueFunction,
    source_tokens: torch.Tensor,
    moves: torch.Tensor,
    annotation_keys: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """The TD targets every AB method's EMA model returns (method.md section 2), as (N, V, L):

        y(l | x_t) = (1 - gamma) p(l | x_t) + gamma AGG_a Q(l | x_t, a)

    reward: (N*V, L) or (N, V, L) p(l | x_t) of the target views; source_tokens, moves: the
    EMA model's tokens of those views and their moves on (used only when gamma > 0);
    ``annotation_keys`` gives psi_AB (L, d), called only when gamma > 0 (the published gamma = 0
    needs no value prediction).
    """
    m = cfg.method
    reward = reward.view(moves.shape[0], -1, reward.shape[-1])
    next_values = None
    if m.gamma > 0:
        next_values = torch.softmax(value_function.logits(source_tokens, moves, annotation_keys()).float(), dim=-1)
    return td_target(reward, next_values, m.gamma, m.aggregate)


@contextlib.contextmanager
def frozen_statistics(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in eval mode (BatchNorm on its running statistics, which stay unchanged)
    and restore each submodule's own mode after: the online network standing in for its target
    (method.target_network=online) normalises as the EMA target would."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def ab_batch_sizes(cfg: Config, base_views_per_image: int) -> Dict[str, int]:
    """Images per step in each stream, split from the base batch B (method.md section 4).

    Annotation images: B * annotation_fraction. Bootstrap images: B * bootstrap_fraction, or by
    default as many as make the step render the base method's B * base_views_per_image views:
    the annotation images' views plus ``views.bootstrap_views`` plain crops per bootstrap image.
    """
    base, m, v = cfg.train.batch_size, cfg.method, cfg.views
    # No silent minimum: build_method refuses a split too small, rather than change it.
    annotation = round(base * m.annotation_fraction)
    if m.bootstrap_fraction is not None:
        bootstrap = round(base * m.bootstrap_fraction)
    else:
        bootstrap = round((base - annotation) * base_views_per_image / v.bootstrap_views)
    return {"annotation": annotation, "bootstrap": bootstrap}


def ab_loss_weight(cfg: Config, step: int) -> float:
    """The bootstrap loss weight at ``step``: ab_weight, ramped up over ab_weight_warmup of the run."""
    m = cfg.method
    ramp_steps = m.ab_weight_warmup * cfg.train.steps
    return m.ab_weight * (min(1.0, step / ramp_steps) if ramp_steps > 0 else 1.0)


def bootstrap_boxes(batch: ImageBatch, cfg: Config, sources: int = 0,
                    source_scale: Optional[List[float]] = None) -> torch.Tensor:
    """(N, V, 4) crop boxes, ``views.bootstrap_views`` per image: with ``sources`` > 0 the first
    ``sources`` drawn from ``source_scale`` and the others from ``views.bootstrap_scale``
    (asymmetric moves), else all from ``views.bootstrap_scale``."""
    v = cfg.views
    if not sources:
        return sample_crop_boxes(batch.sizes, v.bootstrap_views, v.bootstrap_scale, v.crop_ratio)
    return torch.cat([sample_crop_boxes(batch.sizes, sources, source_scale, v.crop_ratio),
                      sample_crop_boxes(batch.sizes, v.bootstrap_views - sources, v.bootstrap_scale, v.crop_ratio)], 1)


def bootstrap_views(batch: ImageBatch, cfg: Config, normalize: Normalize, sources: int = 0,
                    source_scale: Optional[List[float]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Plain crops (no flip, no colour; method.md section 3), ``views.bootstrap_views`` per image,
    all rendered at ``views.img_size`` (boxes as :func:`bootstrap_boxes`).

    Returns views (N*V, 3, S, S) image-major and their boxes (N, V, 4).
    """
    boxes = bootstrap_boxes(batch, cfg, sources, source_scale)
    return normalize(render_views(batch, boxes, cfg.views.img_size)), boxes


def sized_asymmetric_views(batch: ImageBatch, cfg: Config, normalize: Normalize,
                           source_size: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric moves' plain crops with the source views rendered at ``source_size``
    (views.bootstrap_source_size) and the targets at ``views.img_size``.

    Returns the source views (N*S, 3, source_size, source_size) and the target views
    (N*(V-S), 3, S, S), both image-major, and every crop's box (N, V, 4), sources first.
    """
    v = cfg.views
    boxes = bootstrap_boxes(batch, cfg, v.bootstrap_source_views, v.bootstrap_source_scale)
    sources = v.bootstrap_source_views
    return (normalize(render_views(batch, boxes[:, :sources], source_size)),
            normalize(render_views(batch, boxes[:, sources:], v.img_size)), boxes)


def bootstrap_objective(
    logits: torch.Tensor, targets: torch.Tensor, boxes: torch.Tensor, drop_self_pairs: bool,
    target_boxes: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The TD loss and its health metrics.

    logits (N, S, V, L) predicted Q from S source views to V target views; targets (N, V, L)
    from the EMA model; boxes (N, S, 4) of the source views, and ``target_boxes`` (N, V, 4) of
    the targets (None: the sources are the targets, all pairs). Metrics: the loss, the
    targets' entropy and top-1 agreement bucketed by source/target IoU (rate metrics
    ``ab_agreement/iou_<bucket>``: hits over view pairs).
    """
    loss = bootstrap_loss(logits, targets, drop_self_pairs)
    metrics = {
        "loss/bootstrap": loss.detach(),
        "ab/target_entropy": -(targets * targets.clamp_min(1e-12).log()).sum(-1).mean(),
    }
    iou = box_iou(boxes[:, :, None], (boxes if target_boxes is None else target_boxes)[:, None, :])
    hits, counts = agreement_by_iou(logits.detach(), targets, iou, IOU_EDGES)
    for name, h, c in zip(IOU_NAMES, hits, counts):
        metrics.update(rate_metric(f"ab_agreement/iou_{name}", h, c))
    return loss, metrics
