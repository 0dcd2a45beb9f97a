"""DINO's self-distillation loss, its teacher distribution and collapse monitors (Caron et al. 2021).

The student is trained to match, on every view of an image, the teacher's distribution over K
prototypes on the image's *global* views. The teacher's distribution is centred (an EMA of its
batch-mean logits is subtracted, against one prototype winning everywhere) and sharpened (a low
temperature, against the uniform distribution); the two pressures balance each other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from annoboot.objectives.precision import float32_einsum


def teacher_distribution(teacher_logits: torch.Tensor, center: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    """P_t = softmax((g_t(x) - c) / T_t), the teacher's centred, sharpened distribution.

    teacher_logits: (..., K) prototype logits; center: (K,) or broadcastable.
    Returns (..., K) float32 rows summing to 1. Also ABDINO's reward p(l | x').
    """
    return torch.softmax((teacher_logits.float() - center) / teacher_temp, dim=-1)


def dino_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Cross-entropy from each teacher global view to every *other* student view of the image.

        loss = mean_{t < Vt, s < Vs, s != t} mean_b  -sum_k P_t[t, b, k] log softmax(z_s[s, b] / T_s)_k

    The first Vt student views are the same crops as the teacher's views (the globals), so the
    pair s == t is skipped: matching a view to itself teaches nothing.

    student_logits: (Vs, B, K) view-major, globals first; teacher_probs: (Vt, B, K), Vt <= Vs,
    from :func:`teacher_distribution` (treated as constants).
    Returns a scalar.

    Example::

        probs = teacher_distribution(teacher_head(teacher(globals)).view(2, B, K), center, 0.04)
        loss = dino_loss(student_head(student(views)).view(2 + n_local, B, K), probs, 0.1)
    """
    num_teacher, batch = teacher_probs.shape[:2]
    num_student = student_logits.shape[0]
    log_student = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    # (Vt, Vs): cross-entropy of every teacher/student view pair, summed over the batch.
    cross = -float32_einsum("tbk,sbk->ts", teacher_probs.detach(), log_student) / batch
    same_view = torch.eye(num_teacher, num_student, dtype=torch.bool, device=cross.device)
    # masked sum, not boolean indexing: indexing would sync the device to count the pairs
    return cross.masked_fill(same_view, 0).sum() / (num_teacher * num_student - num_teacher)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float) -> torch.Tensor:
    """c <- m c + (1 - m) mean_b g_t(x_b): the EMA of the teacher's batch-mean logits.

    center: (K,); teacher_logits: (..., K), every leading index a sample. Returns the new
    centre (a new tensor; the caller copies it into its buffer).
    """
    batch_mean = teacher_logits.detach().float().reshape(-1, teacher_logits.shape[-1]).mean(0)
    return momentum * center + (1 - momentum) * batch_mean


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_k p_k log p_k in nats, per row; (..., K) -> (...).

    0 for a one-hot row, log K for the uniform one: a teacher whose mean entropy drifts to
    log K has collapsed to uniform.
    """
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def kl_to_uniform(probs: torch.Tensor) -> torch.Tensor:
    """KL(p || U_K) = log K - H(p) in nats, per row; (..., K) -> (...).

    Applied to the batch-mean distribution it measures how unevenly prototypes are used: it
    tends to log K when one prototype wins for every image (the collapse centring prevents).
    """
    return math.log(probs.shape[-1]) - entropy(probs)
