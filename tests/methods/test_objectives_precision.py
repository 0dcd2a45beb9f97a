"""annoboot.objectives.precision: the similarity products stay float32 under CPU bf16 autocast."""

import torch

from annoboot.objectives import annotation_distribution, clip_loss, nt_xent
from annoboot.objectives.dino import dino_loss, teacher_distribution


def test_losses_under_cpu_bf16_autocast_equal_their_float32_values():
    # Autocast runs matmul/einsum in bf16 even on float32 inputs; the similarity products of the
    # losses must stay float32 (objectives/precision.py), or a cosine near 1 rounds in steps of
    # 0.004, a tenth of a logit at temperature 0.04.
    g = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(32, 64, generator=g), torch.randn(32, 64, generator=g)
    student = torch.randn(4, 8, 256, generator=g)  # (views, batch, prototypes)
    teacher = teacher_distribution(torch.randn(2, 8, 256, generator=g), torch.zeros(256), 0.04)

    def losses():
        return {
            "nt_xent": nt_xent(z_a, z_b, temperature=0.1),
            "clip": clip_loss(z_a, z_b, logit_scale=100.0),
            "dino": dino_loss(student, teacher, student_temp=0.1),
            "reward": annotation_distribution(z_a, z_b, temperature=0.1),  # the whole (32, 32) distribution
        }

    reference = losses()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = losses()
    for name, value in under_autocast.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-5, msg=name)


def test_dino_head_logits_and_value_scoring_stay_float32_under_cpu_bf16_autocast():
    # The networks before them may run in bf16; the products that the 0.04 teacher temperature
    # and the AB logit scale then amplify must not: each equals its float32 computation from
    # the same (autocast) inputs.
    import torch.nn.functional as F

    from annoboot.methods.bootstrapping import ValueFunction
    from annoboot.models import DINOHead
    from annoboot.objectives import caption_distribution
    from annoboot.recipe import load_config

    torch.manual_seed(0)
    head = DINOHead(in_dim=64, hidden_dim=64, bottleneck_dim=32, num_prototypes=256)
    values = ValueFunction(load_config(None, ["model.decoder_depth=1"]), token_width=64, annotation_dim=32)
    features, tokens = torch.randn(8, 64), torch.randn(2, 5, 64)
    moves, keys = torch.randint(0, values.num_bins, (1, 2, 2, 4)), torch.randn(16, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        head_logits, bottleneck = head(features), head.bottleneck(features)
        value_logits, phi = values.logits(tokens, moves, keys), values.decoder(tokens, moves.flatten(0, 1))
        captions = caption_distribution(features[:, :32], keys, 100.0)
    with torch.no_grad():
        expected_head = head.last_layer(bottleneck)
        expected_values = values.scale() * F.normalize(phi.float(), dim=-1) @ F.normalize(keys, dim=-1).T
        expected_captions = caption_distribution(features[:, :32], keys, 100.0)
    for got, expected in [(head_logits, expected_head), (value_logits.flatten(0, 2), expected_values.flatten(0, 1)),
                          (captions, expected_captions)]:
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
