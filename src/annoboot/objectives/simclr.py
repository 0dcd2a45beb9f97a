"""SimCLR's NT-Xent loss and the annotation distribution it defines."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised-temperature cross-entropy (SimCLR, Chen et al. 2020).

    For 2N embeddings (two views of N images), each view's positive is the other view of its
    image and its negatives are the other 2N - 2 views:

        loss = mean_i -log( exp(s(i, pos(i)) / T) / sum_{j != i} exp(s(i, j) / T) )

    with s the cosine similarity.

    z_a, z_b: (N, D) embeddings of view 1 and view 2 (need not be normalised).
    Returns a scalar.

    Example::

        loss = nt_xent(projector(encoder(v1)), projector(encoder(v2)), temperature=0.1)
    """
    n = z_a.shape[0]
    z = F.normalize(torch.cat([z_a, z_b]), dim=-1)
    logits = (z @ z.T).float() / temperature
    logits.fill_diagonal_(float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, positives)


def annotation_distribution(z_views: torch.Tensor, z_annotations: torch.Tensor, temperature: float) -> torch.Tensor:
    """p(l | x): the SimCLR softmax of each view over the annotation images.

    z_views: (M, D), z_annotations: (L, D); both L2-normalised inside. Returns (M, L) rows
    summing to 1. This is ABSimCLR's reward when computed with the EMA model.
    """
    sims = F.normalize(z_views, dim=-1) @ F.normalize(z_annotations, dim=-1).T
    return torch.softmax(sims.float() / temperature, dim=-1)
