"""Encoders and the value decoder."""

import pytest
import torch

from annoboot.errors import AnnobootError
from annoboot.models import ValueDecoder, block_diagonal_mask, build_encoder


@pytest.mark.parametrize(
    "name,kwargs,tokens",
    [("vit_tiny_patch16_224", {"patch_size": 8, "depth": 2}, 16), ("resnet18", {}, 1)],
)
def test_encoder_returns_tokens_and_pooled(name, kwargs, tokens):
    enc = build_encoder(name, 32, kwargs)
    out = enc(torch.randn(2, 3, 32, 32))
    assert out.tokens.shape == (2, tokens, enc.width)
    assert out.pooled.shape == (2, enc.width)


def test_unknown_backbone_is_named():
    with pytest.raises(AnnobootError, match="vit_tinny"):
        build_encoder("vit_tinny_patch16", 32, {})


def test_block_diagonal_mask():
    mask = block_diagonal_mask(2, 2)
    assert mask.tolist() == [[False, False, True, True], [False, False, True, True], [True, True, False, False], [True, True, False, False]]


def test_changing_one_box_leaves_the_other_boxes_outputs_unchanged():
    torch.manual_seed(0)
    decoder = ValueDecoder(token_width=24, width=32, depth=2, num_heads=4, num_bins=16, out_dim=8).eval()
    source = torch.randn(3, 5, 24)
    moves = torch.randint(0, 16, (3, 4, 4))
    changed = moves.clone()
    changed[:, 1] = (changed[:, 1] + 7) % 16
    a, b = decoder(source, moves), decoder(source, changed)
    assert a.shape == (3, 4, 8)
    others = [0, 2, 3]
    assert torch.allclose(a[:, others], b[:, others], atol=1e-5)
    assert (a[:, 1] - b[:, 1]).abs().max() > 1e-3
    # And packing is the same as decoding each box alone.
    alone = torch.cat([decoder(source, moves[:, k : k + 1]) for k in range(4)], dim=1)
    assert torch.allclose(a, alone, atol=1e-5)


def test_value_decoder_reads_the_source_tokens():
    torch.manual_seed(0)
    decoder = ValueDecoder(24, 32, 1, 4, 16, 8).eval()
    moves = torch.randint(0, 16, (2, 3, 4))
    a = decoder(torch.randn(2, 5, 24), moves)
    b = decoder(torch.randn(2, 5, 24), moves)
    assert (a - b).abs().max() > 1e-3
