"""The losses against hand-computed values."""

import math

import pytest
import torch

from annoboot.objectives import (
    aggregate_next_values,
    agreement_by_iou,
    annotation_distribution,
    bootstrap_loss,
    clip_loss,
    nt_xent,
    td_target,
)
from annoboot.objectives.dino import dino_loss, teacher_distribution


def test_nt_xent_matches_hand_computed_orthogonal_case():
    e = torch.eye(2)
    # Each view: positive similarity 1, two negatives with similarity 0, temperature 1.
    expected = math.log((math.e + 2) / math.e)
    assert nt_xent(e, e.clone(), temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_matches_explicit_formula():
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    t = 0.3
    z = torch.nn.functional.normalize(torch.cat([za, zb]), dim=1).double()
    total = 0.0
    for i in range(6):
        pos = (i + 3) % 6
        denom = sum(math.exp(z[i] @ z[j] / t) for j in range(6) if j != i)
        total += -math.log(math.exp(z[i] @ z[pos] / t) / denom)
    assert nt_xent(za, zb, t).item() == pytest.approx(total / 6, rel=1e-5)


def test_nt_xent_is_lower_for_matching_views():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 16, generator=g)
    assert nt_xent(z, z + 0.01 * torch.randn(8, 16, generator=g), 0.1) < nt_xent(z, torch.randn(8, 16, generator=g), 0.1)


def test_annotation_distribution_is_a_softmax_over_annotations():
    views = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    annotations = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    p = annotation_distribution(views, annotations, temperature=0.5)
    expected_row0 = torch.softmax(torch.tensor([1.0, 0.0]) / 0.5, 0)
    assert torch.allclose(p[0], expected_row0)
    assert torch.allclose(p.sum(-1), torch.ones(2))


def _two_annotation_case():
    # One image, 3 views, 2 annotations.
    reward = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]])
    q = torch.zeros(1, 3, 3, 2)
    q[0, 0] = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])  # from view 0 to views 0, 1, 2
    q[0, 1] = torch.tensor([[0.3, 0.7], [0.5, 0.5], [0.1, 0.9]])
    q[0, 2] = torch.tensor([[0.5, 0.5], [0.7, 0.3], [0.4, 0.6]])
    return reward, q


def test_td_target_gamma_zero_is_the_reward():
    reward, q = _two_annotation_case()
    assert torch.equal(td_target(reward, q, gamma=0.0), reward)


def test_td_target_mean_aggregate_hand_computed():
    reward, q = _two_annotation_case()
    y = td_target(reward, q, gamma=0.5, aggregate="mean")
    # View 0: mean of moves to views 1 and 2 = [(0.2+0.6)/2, (0.8+0.4)/2] = [0.4, 0.6]
    assert torch.allclose(y[0, 0], torch.tensor([0.5 * 1.0 + 0.5 * 0.4, 0.5 * 0.0 + 0.5 * 0.6]))
    # View 1: moves to views 0 and 2 = [(0.3+0.1)/2, (0.7+0.9)/2] = [0.2, 0.8]
    assert torch.allclose(y[0, 1], torch.tensor([0.1, 0.9]))
    assert torch.allclose(y.sum(-1), torch.ones(1, 3))


def test_td_target_max_aggregate_is_renormalised_max():
    reward, q = _two_annotation_case()
    agg = aggregate_next_values(q, "max")
    # View 2: moves to 0 and 1: max per annotation = [0.7, 0.5] -> renormalised [7/12, 5/12]
    assert torch.allclose(agg[0, 2], torch.tensor([7 / 12, 5 / 12]))
    y = td_target(reward, q, gamma=0.25, aggregate="max")
    assert torch.allclose(y[0, 2], 0.75 * torch.tensor([0.5, 0.5]) + 0.25 * torch.tensor([7 / 12, 5 / 12]))
    assert torch.allclose(y.sum(-1), torch.ones(1, 3))


def test_td_target_needs_next_values_when_gamma_positive():
    reward, _ = _two_annotation_case()
    with pytest.raises(ValueError, match="next_value_probs"):
        td_target(reward, None, gamma=0.5)


def test_bootstrap_loss_hand_computed():
    # Uniform predictions over L annotations cost log L whatever the target.
    logits = torch.zeros(2, 3, 3, 4)
    target = torch.softmax(torch.randn(2, 3, 4), -1)
    assert bootstrap_loss(logits, target).item() == pytest.approx(math.log(4), rel=1e-6)
    # A confident correct prediction costs about 0; a confident wrong one a lot.
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    good = torch.tensor([[[[20.0, 0.0], [0.0, 20.0]], [[20.0, 0.0], [0.0, 20.0]]]])
    assert bootstrap_loss(good, target).item() < 1e-6
    assert bootstrap_loss(-good, target).item() > 19


def test_bootstrap_loss_drop_self_pairs_ignores_the_diagonal():
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0, 1] = torch.tensor([0.0, 10.0])  # off-diagonal: correct and confident
    logits[0, 1, 0] = torch.tensor([10.0, 0.0])
    logits[0, 0, 0] = torch.tensor([-50.0, 50.0])  # diagonal: badly wrong
    logits[0, 1, 1] = torch.tensor([50.0, -50.0])
    assert bootstrap_loss(logits, target, drop_self_pairs=True).item() < 1e-3
    assert bootstrap_loss(logits, target, drop_self_pairs=False).item() > 40


def test_bootstrap_loss_sends_no_gradient_into_the_target():
    target = torch.softmax(torch.randn(1, 2, 3), -1).requires_grad_()
    logits = torch.randn(1, 2, 2, 3, requires_grad=True)
    bootstrap_loss(logits, target).backward()
    assert target.grad is None and logits.grad is not None


def test_agreement_by_iou_counts_pairs_per_bucket():
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # view 0 -> class 0, view 1 -> class 1
    logits = torch.tensor([[[[5.0, 0.0], [5.0, 0.0]], [[5.0, 0.0], [0.0, 5.0]]]])  # pair (0,1) wrong
    iou = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    hits, counts = agreement_by_iou(logits, target, iou, (0.0, 1e-6, 0.5, 1.0001))
    assert counts.tolist() == [2.0, 0.0, 2.0]
    assert hits.tolist() == [1.0, 0.0, 2.0]


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

    from annoboot.config import load_config
    from annoboot.methods.bootstrapping import ValueFunction
    from annoboot.models import DINOHead
    from annoboot.objectives import caption_distribution

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
