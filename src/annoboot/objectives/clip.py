"""CLIP's symmetric contrastive loss and the image-to-caption distribution it defines."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from annoboot import distributed
from annoboot.objectives.precision import float32_matmul


def clip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float, gather_distributed: bool = False
) -> torch.Tensor:
    """Symmetric InfoNCE over matched image-caption pairs (Radford et al. 2021).

        loss = ( CE(s * I T^T, diag) + CE(s * T I^T, diag) ) / 2

    with I, T the L2-normalised image and text embeddings and s the logit scale (1 / temperature).

    image_emb, text_emb: (n, D) this rank's pairs (row i of each belongs together). With
    ``gather_distributed`` the negatives are every rank's pairs (N = world * n): this rank's
    rows are scored against all gathered columns (gathered with gradient) and the loss is the
    mean over local rows, so with DDP's gradient averaging it trains like the single-process
    loss on the global batch. Returns a scalar.
    """
    n = image_emb.shape[0]
    image_emb, text_emb = F.normalize(image_emb.float(), dim=-1), F.normalize(text_emb.float(), dim=-1)
    offset = 0
    all_images, all_texts = image_emb, text_emb
    if gather_distributed and distributed.world_size() > 1:
        offset = distributed.rank() * n
        all_images, all_texts = distributed.gather_with_grad(image_emb), distributed.gather_with_grad(text_emb)
    targets = offset + torch.arange(n, device=image_emb.device)
    logits_per_image = logit_scale * float32_matmul(image_emb, all_texts.T)
    logits_per_text = logit_scale * float32_matmul(text_emb, all_images.T)
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2


def caption_distribution(image_emb: torch.Tensor, caption_emb: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """p(l | x): each view's softmax over the captions, (M, D) x (L, D) -> (M, L) rows summing
    to 1. ABCLIP's reward when computed with the EMA model."""
    sims = float32_matmul(F.normalize(image_emb.float(), dim=-1), F.normalize(caption_emb.float(), dim=-1).T)
    return torch.softmax(logit_scale * sims, dim=-1)
