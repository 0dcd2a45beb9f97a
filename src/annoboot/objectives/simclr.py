"""SimCLR's NT-Xent loss and the annotation distribution it defines."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from annoboot import distributed
from annoboot.objectives.precision import float32_matmul


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float, gather_distributed: bool = False) -> torch.Tensor:
    """Normalised-temperature cross-entropy (SimCLR, Chen et al. 2020).

    For 2N embeddings (two views of N images), each view's positive is the other view of its
    image and its negatives are the other 2N - 2 views:

        loss = mean_i -log( exp(s(i, pos(i)) / T) / sum_{j != i} exp(s(i, j) / T) )

    with s the cosine similarity.

    z_a, z_b: (n, D) embeddings of view 1 and view 2 of this rank's n images (need not be
    normalised). gather_distributed: negatives come from every rank's images (N = world * n);
    the loss is the mean over this rank's 2n rows and gradients reach the other ranks' rows,
    so under DDP it equals the single-process loss on the global batch.
    Returns a scalar.

    Example::

        loss = nt_xent(projector(encoder(v1)), projector(encoder(v2)), temperature=0.1)
    """
    n = z_a.shape[0]
    z_a, z_b = F.normalize(z_a.float(), dim=-1), F.normalize(z_b.float(), dim=-1)
    offset, total = 0, n
    if gather_distributed and distributed.world_size() > 1:
        offset, total = distributed.rank() * n, distributed.world_size() * n
        all_a, all_b = distributed.gather_with_grad(z_a), distributed.gather_with_grad(z_b)
    else:
        all_a, all_b = z_a, z_b
    local = torch.cat([z_a, z_b])  # rows: this rank's 2n views
    everyone = torch.cat([all_a, all_b])  # columns: all 2N views, view-1 block then view-2 block
    logits = float32_matmul(local, everyone.T) / temperature
    rows = torch.arange(n, device=z_a.device)
    own = torch.cat([offset + rows, total + offset + rows])  # each row's own column
    positives = torch.cat([total + offset + rows, offset + rows])
    logits[torch.arange(2 * n, device=z_a.device), own] = float("-inf")
    return F.cross_entropy(logits, positives)


def annotation_distribution(z_views: torch.Tensor, z_annotations: torch.Tensor, temperature: float,
                            excluded: Optional[torch.Tensor] = None) -> torch.Tensor:
    """p(l | x): the SimCLR softmax of each view over the annotation images.

    z_views: (M, D), z_annotations: (L, D); both L2-normalised inside. Returns (M, L) rows
    summing to 1. This is ABSimCLR's reward when computed with the EMA model.
    excluded: (M, L) bool, annotations left out of a view's softmax (probability 0); every row
    must keep at least one.
    """
    sims = float32_matmul(F.normalize(z_views.float(), dim=-1), F.normalize(z_annotations.float(), dim=-1).T)
    if excluded is not None:  # -inf before the softmax, not a renormalised product: the kept
        sims = sims.masked_fill(excluded, float("-inf"))  # similarities may all underflow after it
    return torch.softmax(sims / temperature, dim=-1)
