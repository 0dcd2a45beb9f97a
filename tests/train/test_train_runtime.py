"""annoboot.runtime: explicit attention computes what the fused kernel does."""

import pytest
import torch

from annoboot.models import ValueDecoder, build_encoder
from annoboot.runtime import set_fused_attention


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
