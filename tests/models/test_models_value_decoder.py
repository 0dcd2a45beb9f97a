"""annoboot.models.value_decoder: boxes decode independently, from the source tokens, without a host sync."""

import pytest
import torch

from annoboot.models import ValueDecoder
from annoboot.runtime import set_fused_attention


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


@pytest.mark.parametrize("fused", [True, False])
def test_value_decoder_forward_and_backward_need_no_host_sync(fused, monkeypatch):
    # torch's own decoder inspected the attention mask on the host (is it causal?) in every
    # call: a GPU sync per step. On the meta device any such read raises, so a pass there shows
    # that none is left; masks and causal flags are what would bring one back.
    import torch.nn.functional as F

    torch.manual_seed(0)
    decoder = ValueDecoder(token_width=24, width=32, depth=2, num_heads=4, num_bins=16, out_dim=8)
    set_fused_attention(decoder, fused)
    attention_calls = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(*args, **kwargs):
        attention_calls.append(kwargs)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    for device in ["meta"] + (["cuda"] if torch.cuda.is_available() else []):
        net = decoder.to(device)
        source = torch.randn(3, 5, 24, device=device, requires_grad=True)
        moves = torch.randint(0, 16, (3, 4, 4), device=device)
        if device == "cuda":
            net(source, moves)  # first call: lazy initialisation may sync
            torch.cuda.set_sync_debug_mode("error")
        try:
            out = net(source, moves)
            out.sum().backward()
        finally:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("default")
        assert out.shape == (3, 4, 8)
    assert all(call.get("attn_mask") is None and not call.get("is_causal", False) for call in attention_calls)
    assert bool(attention_calls) == fused


@pytest.mark.parametrize("memory_rows", [1, 2])
def test_memory_of_another_batch_size_than_the_queries_is_refused(memory_rows):
    """One source view's tokens per row of moves. 3 query rows over a memory of 1 x 6 tokens
    would otherwise be reshaped into 3 rows of 2 tokens. Caught break: the check removed."""
    from annoboot.models.value_decoder import CrossAttention

    attention = CrossAttention(width=8, num_heads=2)
    with pytest.raises(ValueError, match=rf"3 query rows \(sources of moves\) but memory for {memory_rows}"):
        attention(torch.randn(3, 4, 8), torch.randn(memory_rows, 6, 8))
    decoder = ValueDecoder(token_width=8, width=8, depth=1, num_heads=2, num_bins=16, out_dim=4)
    with pytest.raises(ValueError, match="one memory per row of queries"):
        decoder(torch.randn(memory_rows, 6, 8), torch.randint(0, 16, (3, 2, 4)))
    assert attention(torch.randn(3, 4, 8), torch.randn(3, 6, 8)).shape == (3, 4, 8)


def test_explicit_cross_attention_equals_pytorchs_fused_kernel():
    """The explicit path (softmax(q k^T / sqrt(d)) v, used where the fused kernel is slower)
    gives what F.scaled_dot_product_attention gives on the same projections."""
    from annoboot.models.value_decoder import CrossAttention

    torch.manual_seed(0)
    attention = CrossAttention(32, 4)
    queries, memory = torch.randn(3, 8, 32), torch.randn(3, 11, 32)
    attention.fused_attn = True
    fused = attention(queries, memory)
    attention.fused_attn = False
    assert torch.allclose(attention(queries, memory), fused, atol=1e-5)
    # With a memory mask (model.decoder_attention=target_box) too, each query row its own.
    mask = torch.rand(3, 8, 11) < 0.4
    mask[..., 0] = True  # every row reads at least one token
    attention.fused_attn = True
    fused = attention(queries, memory, mask)
    attention.fused_attn = False
    assert torch.allclose(attention(queries, memory, mask), fused, atol=1e-5)
    assert not torch.allclose(fused, attention(queries, memory), atol=1e-3)  # the mask changed the output


def test_value_decoder_computes_its_equation():
    """The decoder written out from its parts: queries = bin embedding + coordinate embedding; per
    block x += SelfAttn_box(LN x); x += CrossAttn(LN x, memory); x += MLP(LN x); each box's 4
    outputs averaged after the last norm, then the head."""
    torch.manual_seed(0)
    decoder = ValueDecoder(token_width=24, width=32, depth=2, num_heads=4, num_bins=16, out_dim=5).eval()
    for p in decoder.parameters():  # away from the initialisation's zeros and ones
        p.data.add_(0.1 * torch.randn_like(p))
    tokens, moves = torch.randn(2, 9, 24), torch.randint(0, 16, (2, 3, 4))
    x = (decoder.bin_embed(moves) + decoder.coord_embed).flatten(1, 2)
    memory = decoder.memory_proj(tokens)
    for block in decoder.blocks:
        x = x + block.self_attn(block.norm_self(x).view(-1, 4, 32)).view(2, 12, 32)
        x = x + block.cross_attn(block.norm_cross(x), memory)
        x = x + block.mlp(block.norm_mlp(x))
    want = decoder.head(decoder.norm(x).view(2, 3, 4, 32).mean(2))
    assert torch.allclose(decoder(tokens, moves), want, atol=1e-6)


def test_decoder_blocks_have_the_configured_heads_biases_and_mlp_width():
    """What the equation test cannot see (it reuses the blocks' own parts): each block's
    self-attention has decoder_heads heads with qkv biases, and its MLP width * mlp_ratio units."""
    decoder = ValueDecoder(token_width=24, width=32, depth=2, num_heads=4, num_bins=16, out_dim=5, mlp_ratio=3.0)
    for block in decoder.blocks:
        assert block.self_attn.num_heads == 4 and block.self_attn.qkv.bias is not None
        assert block.cross_attn.num_heads == 4 and block.mlp.fc1.out_features == 96


def test_move_tokens_know_which_coordinate_they_are_and_memory_is_layer_normalised():
    """A move's four tokens carry their coordinate's own embedding (x0, y0, x1, y1 of one bin are
    four different queries), and the source tokens are layer-normalised before the decoder reads
    them, so Q does not change when a token is scaled or shifted (the value decoder's reading of
the tokens themselves is tested above). Small initial embeddings (std 0.02).
    Caught breaks: one embedding shared by the four coordinates; the memory's LayerNorm dropped;
    unit-variance initialisation."""
    torch.manual_seed(0)
    decoder = ValueDecoder(token_width=12, width=16, depth=1, num_heads=2, num_bins=8, out_dim=5)
    assert decoder.coord_embed.shape == (4, 16)
    same_bin = torch.full((1, 1, 4), 3)
    queries = decoder.bin_embed(same_bin) + decoder.coord_embed  # (1, 1, 4, W)
    assert all((queries[0, 0, i] - queries[0, 0, j]).abs().max() > 1e-4 for i in range(4) for j in range(i))
    assert decoder.coord_embed.std() < 0.05 and decoder.bin_embed.weight.std() < 0.05
    memory = torch.randn(1, 6, 12)
    moves = torch.randint(0, 8, (1, 3, 4))
    with torch.no_grad():
        # Each token scaled and shifted by its own amount: LayerNorm removes both.
        scaled = memory * torch.linspace(0.5, 10, 6)[:, None] + torch.linspace(-3, 3, 6)[:, None]
        torch.testing.assert_close(decoder(scaled, moves), decoder(memory, moves), atol=1e-4, rtol=1e-4)
