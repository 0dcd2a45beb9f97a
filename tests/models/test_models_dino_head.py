"""annoboot.models.dino_head: logits are cosines to unit prototypes."""

import torch

from annoboot.models import DINOHead


def test_dino_head_logits_are_cosines_to_unit_prototypes():
    head = DINOHead(in_dim=32, hidden_dim=64, bottleneck_dim=16, num_prototypes=10)
    logits = head(torch.randn(5, 32))
    assert logits.shape == (5, 10)
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(10), atol=1e-5)
    assert logits.abs().max() <= 1 + 1e-5
    magnitude = head.last_layer.parametrizations.weight.original0
    assert not magnitude.requires_grad  # DINO's norm_last_layer: only directions learn
