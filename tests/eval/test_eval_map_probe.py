"""annoboot.eval.map_probe: the MAP probe finds what mean pooling drowns."""

from __future__ import annotations

import torch
from helpers import one_thread  # noqa: F401  (an autouse fixture: tiny workloads run on one thread)

from annoboot.eval.linear import linear_probe
from annoboot.eval.map_probe import MAPHead, default_num_heads, map_probe


def pointer_tokens(num: int, seed: int, num_tokens: int = 16, dim: int = 32, num_classes: int = 4):
    """Every token is a noisy class prototype; the class of the example is the prototype of the
    one token carrying a marker, at a random position. Mean pooling sees mostly distractors."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123))
    marker = 3 * torch.randn(dim, generator=torch.Generator().manual_seed(7))
    labels = torch.randint(0, num_classes, (num,), generator=generator)
    distractors = torch.randint(0, num_classes, (num, num_tokens), generator=generator)
    tokens = prototypes[distractors] + 0.3 * torch.randn(num, num_tokens, dim, generator=generator)
    position = torch.randint(0, num_tokens, (num,), generator=generator)
    tokens[torch.arange(num), position] = prototypes[labels] + marker + 0.3 * torch.randn(num, dim, generator=generator)
    return tokens.half(), labels


def test_map_probe_finds_the_class_token_that_mean_pooling_drowns():
    train_tokens, train_y = pointer_tokens(1000, seed=0)
    test_tokens, test_y = pointer_tokens(400, seed=1)
    result = map_probe(train_tokens, train_y, test_tokens, test_y, 4, lrs=(1e-3, 3e-3), epochs=20, batch_size=64)
    mean_pooled = linear_probe(train_tokens.float().mean(1), train_y, test_tokens.float().mean(1), test_y, 4)
    assert result["test_acc"] > 90  # chance is 25
    assert mean_pooled["test_acc"] < 60


def test_map_head_shapes_and_default_heads():
    assert [default_num_heads(d) for d in (192, 36, 20, 9, 14, 7)] == [8, 6, 4, 3, 2, 1]
    head = MAPHead(dim=12, num_classes=5)
    assert head.attention.num_heads == 6
    assert head(torch.randn(3, 7, 12)).shape == (3, 5)
