"""annoboot.objectives.td: TD targets, the bootstrap loss and agreement by IoU."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from annoboot.objectives import aggregate_next_values, agreement_by_iou, bootstrap_loss, td_target


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


def test_bootstrap_loss_drop_self_pairs_divides_by_the_off_diagonal_pairs_of_every_image():
    """The divisor pinned: with self pairs dropped the loss is the mean over N * V * (V - 1)
    pairs, not over N * V * V (a zeroed diagonal), nor per image or per source view alone.
    Caught breaks: dividing the off-diagonal sum by N * V * V; averaging over one image's pairs."""
    # Target one-hot on annotation 0; logits (0, log k) cost -log(1 / (1 + k)) = log(1 + k):
    # log 2 for image 0's moves, log 4 for image 1's, log 8 for every stay-here pair.
    target = torch.tensor([1.0, 0.0]).expand(2, 3, 2)
    logits = torch.zeros(2, 3, 3, 2)
    logits[0, ..., 1] = math.log(1)
    logits[1, ..., 1] = math.log(3)
    logits[:, torch.arange(3), torch.arange(3), 1] = math.log(7)
    log2 = math.log(2)
    # Dropped: (6 log 2 + 6 log 4) / 12 = 1.5 log 2; kept: (6 + 12 + 18) log 2 / 18 = 2 log 2.
    assert bootstrap_loss(logits, target, drop_self_pairs=True).item() == pytest.approx(1.5 * log2, rel=1e-6)
    assert bootstrap_loss(logits, target, drop_self_pairs=False).item() == pytest.approx(2.0 * log2, rel=1e-6)


def test_agreement_by_iou_puts_interior_edges_in_the_bucket_they_open():
    """The published buckets (0, 0-0.2, 0.2-0.5, 0.5-0.8, 0.8-1): an IoU of exactly 0.2, 0.5 or 0.8
    belongs to the bucket that starts there (edges[k] <= iou < edges[k+1]).
    Caught breaks: ``iou > edge`` instead of ``>=`` (0.2, 0.5, 0.8 fall one bucket low); bucket
    names out of step with the edges."""
    from annoboot.methods.bootstrapping import IOU_EDGES, IOU_NAMES

    assert IOU_NAMES == ("0", "0-0.2", "0.2-0.5", "0.5-0.8", "0.8-1")
    # One image, 3 x 3 pairs; pair (s, t) has the IoU below. Targets: annotation 0 for every view.
    iou = torch.tensor([[[0.0, 0.1, 0.2], [0.35, 0.5, 0.65], [0.8, 0.9, 1.0]]])
    target = torch.tensor([1.0, 0.0]).expand(1, 3, 2)
    logits = torch.zeros(1, 3, 3, 2)
    logits[..., 0] = 1.0  # every prediction annotation 0 (a hit) ...
    logits[0, 0, 2, 0] = -1.0  # ... but the pairs at IoU 0.2 and 0.8 miss
    logits[0, 2, 0, 0] = -1.0
    hits, counts = agreement_by_iou(logits, target, iou, IOU_EDGES)
    # Buckets: {0}, {0.1}, {0.2, 0.35}, {0.5, 0.65}, {0.8, 0.9, 1.0}
    assert counts.tolist() == [1.0, 1.0, 2.0, 2.0, 3.0]
    assert hits.tolist() == [1.0, 1.0, 1.0, 2.0, 2.0]


IOU_GRID = (0.0, 1e-6, 0.2, 0.5, 0.8, 1.0001)


@settings(max_examples=60, deadline=None)
@given(images=st.integers(1, 3), views=st.integers(2, 4), labels=st.integers(2, 5), seed=st.integers(0, 2**16))
def test_agreement_by_iou_equals_a_loop_over_pairs(images, views, labels, seed):
    """Against the definition, pair by pair: the prediction for the move s -> t agrees when its
    top annotation is the target's top one on view t; the pair counts in the bucket
    edges[k] <= IoU < edges[k+1], and not at all outside [edges[0], edges[-1])."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(images, views, views, labels, generator=generator)
    targets = torch.randn(images, views, labels, generator=generator).softmax(-1)
    # IoUs on the edges themselves and outside the grid as well as between (float64: compared with
    # the edges exactly as the loop compares them)
    choices = torch.tensor([-0.5, 0.0, 1e-6, 0.1, 0.2, 0.5, 0.7, 0.8, 1.0, 1.0001, 1.5], dtype=torch.float64)
    iou = choices[torch.randint(len(choices), (images, views, views), generator=generator)]
    hits, counts = agreement_by_iou(logits, targets, iou, IOU_GRID)
    want_hits, want_counts = torch.zeros(len(IOU_GRID) - 1), torch.zeros(len(IOU_GRID) - 1)
    for n in range(images):
        for s in range(views):
            for t in range(views):
                value = iou[n, s, t].item()
                for k in range(len(IOU_GRID) - 1):
                    if IOU_GRID[k] <= value < IOU_GRID[k + 1]:
                        want_counts[k] += 1
                        want_hits[k] += float(logits[n, s, t].argmax() == targets[n, t].argmax())
    assert torch.equal(counts, want_counts) and torch.equal(hits, want_hits)


@pytest.mark.parametrize("aggregate", ["mean", "max"])
def test_two_views_are_enough_to_bootstrap_through_next_values(aggregate):
    """V = 2, the fewest: each view's only next move is to the other one."""
    q = torch.tensor([[[[0.5, 0.5], [0.9, 0.1]], [[0.2, 0.8], [0.5, 0.5]]]])
    assert torch.allclose(aggregate_next_values(q, aggregate), torch.tensor([[[0.9, 0.1], [0.2, 0.8]]]))
    with pytest.raises(ValueError, match="at least 2 views"):
        aggregate_next_values(q[:, :1, :1], aggregate)
