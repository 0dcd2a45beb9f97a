"""annoboot.objectives.clip: the CLIP loss and the caption distribution."""

import math

import pytest
import torch

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
