"""annoboot.objectives.clip: the CLIP loss and the caption distribution."""

import math

import pytest
import torch
import torch.nn.functional as F

from annoboot.objectives import caption_distribution, clip_loss


def test_clip_loss_matches_a_hand_computed_case():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # s * I T^T = [[2, 1.2], [0, 1.6]]; s * T I^T = [[2, 0], [1.2, 1.6]] with s = 2.
    image_rows = (math.log1p(math.exp(-0.8)) + math.log1p(math.exp(-1.6))) / 2
    text_rows = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-0.4))) / 2
    expected = (image_rows + text_rows) / 2
    assert clip_loss(images * 3, texts, 2.0).item() == pytest.approx(expected, rel=1e-6)  # scale-free in the inputs


def test_caption_distribution_is_the_scaled_softmax_over_captions():
    views, captions = torch.randn(5, 8), torch.randn(3, 8)
    p = caption_distribution(views, captions, 10.0)
    assert p.shape == (5, 3)
    assert torch.allclose(p.sum(-1), torch.ones(5))
    cos = torch.nn.functional.normalize(views, dim=-1) @ torch.nn.functional.normalize(captions, dim=-1).T
    assert torch.allclose(p, torch.softmax(10 * cos, -1), atol=1e-6)


def test_caption_distribution_is_the_softmax_of_scaled_cosines():
    """p(l | x) = softmax_l(s cos(image_x, caption_l)), with unnormalised inputs of unequal norms."""
    torch.manual_seed(0)
    images, captions = 3 * torch.randn(5, 8), torch.randn(7, 8) * torch.arange(1, 8).view(7, 1)
    cosines = F.cosine_similarity(images[:, None], captions[None], dim=-1)
    assert torch.allclose(caption_distribution(images, captions, 10.0), torch.softmax(10.0 * cosines, dim=-1), atol=1e-6)


def test_clip_loss_normalises_each_embedding_not_each_dimension():
    """Cosine similarities: scaling one image's embedding or one caption's changes nothing.
    Caught break: normalising over the batch axis instead of the feature axis."""
    torch.manual_seed(0)
    images, texts = torch.randn(4, 8), torch.randn(4, 8)
    scales = torch.tensor([[0.5], [2.0], [3.0], [10.0]])
    reference = clip_loss(images, texts, 10.0)
    assert torch.allclose(clip_loss(images * scales, texts, 10.0), reference, atol=1e-5)
    assert torch.allclose(clip_loss(images, texts * scales.flip(0), 10.0), reference, atol=1e-5)
