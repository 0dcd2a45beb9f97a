"""Pure losses: functions of tensors, no trainer, config or I/O."""

from annoboot.objectives.td import (
    aggregate_next_values,
    agreement_by_iou,
    bootstrap_loss,
    soft_cross_entropy,
    td_target,
)
from annoboot.objectives.clip import caption_distribution, clip_loss
from annoboot.objectives.dino import dino_loss, entropy, kl_to_uniform, teacher_distribution, update_center
from annoboot.objectives.simclr import annotation_distribution, nt_xent

__all__ = [
    "aggregate_next_values",
    "agreement_by_iou",
    "annotation_distribution",
    "bootstrap_loss",
    "caption_distribution",
    "clip_loss",
    "dino_loss",
    "entropy",
    "kl_to_uniform",
    "nt_xent",
    "soft_cross_entropy",
    "td_target",
    "teacher_distribution",
    "update_center",
]
