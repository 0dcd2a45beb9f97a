"""annoboot.models.text_encoder: the caption tokenizer and the causal text tower."""

import pytest
import torch

from annoboot.errors import AnnobootError
from annoboot.models import CaptionTokenizer, TextEncoder
from annoboot.runtime import set_fused_attention


def test_tokenizer_round_trip_and_truncation():
    tok = CaptionTokenizer(context_length=8)
    ids = tok(["A Sumatran tiger.", "one two three four five six seven eight nine", ""])
    assert ids.shape == (3, 8) and ids.dtype == torch.int64
    assert tok.decode(ids[:1]) == ["a sumatran tiger ."]
    assert ids[0, 0] == tok.start_id and (ids[0] == tok.end_id).sum() == 1
    # A long caption is cut to the context and still ends with the end-of-text token.
    assert ids[1, -1] == tok.end_id and tok.decode(ids[1:2]) == ["one two three four five six"]
    assert ids[2, :2].tolist() == [tok.start_id, tok.end_id] and ids[2, 2:].eq(0).all()
    with pytest.raises(TypeError):
        tok("a single string")
    with pytest.raises(AnnobootError, match="context_length"):
        CaptionTokenizer(context_length=2)


def test_text_encoder_reads_the_end_token_and_is_causal():
    torch.manual_seed(0)
    tok = CaptionTokenizer(context_length=12)
    enc = TextEncoder(tok.vocab_size, 12, width=32, depth=2, heads=4, end_id=tok.end_id).eval()
    ids = tok(["a red sneaker", "a red sneaker on a table"])
    out = enc(ids)
    assert out.shape == (2, 32)
    # The first caption's feature ignores whatever follows its end token (padding or not).
    changed = ids.clone()
    changed[0, 6:] = 1234
    assert torch.allclose(enc(changed)[0], out[0], atol=1e-5)
    # The two captions share a prefix but end differently: different features.
    assert not torch.allclose(out[0], out[1], atol=1e-3)


def test_explicit_attention_computes_what_the_fused_kernel_does():
    # The trainer switches the text tower to explicit attention on CPU (faster backward): the
    # same function of the same weights, outputs and gradients, up to float rounding.
    torch.manual_seed(0)
    encoder = TextEncoder(500, 16, 32, 2, 2, end_id=499)
    tokens = torch.randint(1, 498, (6, 16))
    tokens[:, 7] = 499
    tokens[:, 8:] = 0
    outputs, grads = [], []
    for fused in (True, False):
        encoder.fused_attn = fused
        encoder.zero_grad()
        out = encoder(tokens)
        out.pow(2).sum().backward()
        outputs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in encoder.parameters() if p.grad is not None]))
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-4)
    assert set_fused_attention(encoder, False) == 1 and not encoder.fused_attn  # the trainer's switch reaches it
