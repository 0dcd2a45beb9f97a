"""annoboot.objectives.simclr: NT-Xent and the annotation distribution against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from annoboot.objectives import annotation_distribution, nt_xent


def test_nt_xent_matches_hand_computed_orthogonal_case():
    e = torch.eye(2)
    # Each view: positive similarity 1, two negatives with similarity 0, temperature 1.
    expected = math.log((math.e + 2) / math.e)
    assert nt_xent(e, e.clone(), temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_matches_explicit_formula():
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    t = 0.3
    z = torch.nn.functional.normalize(torch.cat([za, zb]), dim=1).double()
    total = 0.0
    for i in range(6):
        pos = (i + 3) % 6
        denom = sum(math.exp(z[i] @ z[j] / t) for j in range(6) if j != i)
        total += -math.log(math.exp(z[i] @ z[pos] / t) / denom)
    assert nt_xent(za, zb, t).item() == pytest.approx(total / 6, rel=1e-5)


def test_nt_xent_is_lower_for_matching_views():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 16, generator=g)
    assert nt_xent(z, z + 0.01 * torch.randn(8, 16, generator=g), 0.1) < nt_xent(z, torch.randn(8, 16, generator=g), 0.1)


def test_annotation_distribution_is_a_softmax_over_annotations():
    views = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    annotations = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    p = annotation_distribution(views, annotations, temperature=0.5)
    expected_row0 = torch.softmax(torch.tensor([1.0, 0.0]) / 0.5, 0)
    assert torch.allclose(p[0], expected_row0)
    assert torch.allclose(p.sum(-1), torch.ones(2))


def test_annotation_distribution_is_the_softmax_of_cosines_over_the_temperature():
    """p(l | x) = softmax_l(cos(z_x, z_l) / tau), with unnormalised inputs of unequal norms."""
    torch.manual_seed(0)
    views, annotations = 3 * torch.randn(5, 8), torch.randn(7, 8) * torch.arange(1, 8).view(7, 1)
    cosines = F.cosine_similarity(views[:, None], annotations[None], dim=-1)
    assert torch.allclose(annotation_distribution(views, annotations, 0.2), torch.softmax(cosines / 0.2, dim=-1), atol=1e-6)
