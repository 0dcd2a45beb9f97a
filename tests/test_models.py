"""Encoders and the value decoder."""

import pytest
import timm
import torch

from annoboot import distributed
from annoboot.errors import AnnobootError
from annoboot.models import ValueDecoder, build_encoder
from annoboot.train.runtime import set_fused_attention


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


@pytest.mark.parametrize("module", ["decoder", "vit"])
def test_explicit_attention_computes_what_the_fused_kernel_does(module):
    torch.manual_seed(0)
    if module == "decoder":
        net = ValueDecoder(token_width=24, width=32, depth=2, num_heads=4, num_bins=16, out_dim=8)
        inputs = (torch.randn(3, 5, 24), torch.randint(0, 16, (3, 4, 4)))
        run = lambda: net(*inputs)  # noqa: E731
    else:
        net = build_encoder("vit_tiny_patch16_224", 32, {"patch_size": 8, "depth": 2})
        images = torch.randn(2, 3, 32, 32)
        run = lambda: net(images).pooled  # noqa: E731
    assert set_fused_attention(net, True) >= 2
    fused = run()
    set_fused_attention(net, False)
    assert torch.allclose(run(), fused, atol=1e-5)


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


def test_cpu_bf16_autocast_reaches_vits_but_not_cnns():
    # oneDNN's bf16 weight gradient of a strided 3x3 convolution over a 1x1 channels-last map is
    # wrong by orders of magnitude (torch 2.14.1): CNN encoders stay in float32 on the CPU.
    images = torch.randn(2, 3, 32, 32)
    for name, kwargs, layer, dtype in [("vit_tiny_patch16_224", {"patch_size": 8, "depth": 1}, torch.nn.Linear, torch.bfloat16),
                                       ("resnet18", {}, torch.nn.Conv2d, torch.float32)]:
        encoder = build_encoder(name, 32, kwargs)
        seen = []
        next(m for m in encoder.modules() if isinstance(m, layer)).register_forward_hook(lambda m, i, out: seen.append(out.dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            encoder(images)
        assert seen == [dtype], name


@pytest.mark.parametrize(
    "backbone", ["vit_tiny_patch16_224", "resnet18", "efficientnet_b0", "regnety_002", "convnext_atto"]
)
def test_sync_batchnorm_conversion_keeps_every_documented_family_unchanged(backbone):
    # torch's own converter drops the activation timm fuses into BatchNormAct2d: efficientnet_b0
    # then differs by about 1.2 and regnety_002 by 0.4 on this input.
    torch.manual_seed(0)
    kwargs = {"img_size": 32} if backbone.startswith("vit") else {}
    model = timm.create_model(backbone, pretrained=False, num_classes=0, **kwargs).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(images)
        after = distributed.sync_batchnorm(model).eval()(images)
    assert torch.equal(before, after)


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
