"""annoboot.methods.bootstrapping: the value function's moves (the no-action-tokens ablation)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import one_thread  # noqa: F401  (an autouse fixture: tiny workloads run on one thread)

from annoboot.errors import AnnobootError
from annoboot.methods.bootstrapping import ValueFunction
from annoboot.recipe import load_config


def test_without_action_tokens_every_move_is_the_same_token():
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.1, 0.2, 0.9, 0.7]]])
    with_moves = ValueFunction(load_config(None, []), token_width=8, annotation_dim=4)
    without = ValueFunction(load_config(None, ["method.action_tokens=false"]), token_width=8, annotation_dim=4)
    assert with_moves.moves(boxes).unique().numel() > 1
    moves = without.moves(boxes)
    assert moves.shape == (1, 3, 3, 4) and moves.unique().numel() == 1


# ---------------------------------------------------------------------------------------------
# The TD target of an EMA model, worked by hand (method.md section 2).

class _FixedValues:
    """A value function whose EMA predictions Q(l | x_t, a_{t->t'}) are given: its logits are
    log Q, so the softmax in ema_targets gives Q back. Checks it is handed the tokens and moves."""

    def __init__(self, q, tokens, moves):
        self.q, self.tokens, self.moves = q, tokens, moves

    def logits(self, source_tokens, moves, annotation_keys):
        assert source_tokens is self.tokens and moves is self.moves and annotation_keys.shape == (2, 5)
        return self.q.log()


def _two_images_three_views():
    # Image 0: Q from view t to view t' (rows t, entries t'), 2 annotations. Image 1: the same
    # with the annotations swapped, so averaging over images or swapping them shows.
    q0 = torch.tensor([[[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]],
                       [[0.3, 0.7], [0.5, 0.5], [0.1, 0.9]],
                       [[0.5, 0.5], [0.7, 0.3], [0.4, 0.6]]])
    q = torch.stack([q0, q0.flip(-1)])  # (N=2, V=3, V=3, L=2)
    # The reward p(l | x_t) of the 6 target views, image-major as the encoder returns them.
    reward = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.8], [0.6, 0.4], [1.0, 0.0]])
    tokens, moves = torch.zeros(6, 1, 8), torch.zeros(2, 3, 3, 4, dtype=torch.long)
    return q, reward, tokens, moves


def test_ema_targets_with_gamma_mix_the_reward_with_the_mean_next_value_worked_by_hand():
    """y(l | x_t) = 0.5 p(l | x_t) + 0.5 mean_{t' != t} Q(l | x_t, a_{t->t'}), per image.
    Caught breaks: the reward read view-major instead of image-major; the mean taken over the
    source axis instead of the next moves; the softmax over views instead of annotations."""
    from annoboot.methods.bootstrapping import ema_targets

    q, reward, tokens, moves = _two_images_three_views()
    cfg = load_config(None, ["method.gamma=0.5", "method.aggregate=mean"])
    y = ema_targets(cfg, reward, _FixedValues(q, tokens, moves), tokens, moves, lambda: torch.zeros(2, 5))
    # Image 0, view 0: mean of Q to views 1, 2 = [(0.2 + 0.6) / 2, (0.8 + 0.4) / 2] = [0.4, 0.6];
    # y = 0.5 [1, 0] + 0.5 [0.4, 0.6] = [0.7, 0.3]. View 1: moves to 0, 2 give [0.2, 0.8], so
    # y = [0.1, 0.9]. View 2: moves to 0, 1 give [0.6, 0.4], y = 0.5 [0.5, 0.5] + that / 2.
    # Image 1 (annotations swapped in Q): means [0.6, 0.4], [0.8, 0.2], [0.4, 0.6].
    expected = torch.tensor([[[0.7, 0.3], [0.1, 0.9], [0.55, 0.45]],
                             [[0.4, 0.6], [0.7, 0.3], [0.7, 0.3]]])
    assert torch.allclose(y, expected, atol=1e-6), y


def test_ema_targets_follow_the_configured_aggregate_and_skip_q_at_gamma_zero():
    """aggregate=max: max over next moves per annotation, renormalised; gamma=0: the reward
    alone, without calling psi_AB. Caught breaks: cfg.method.aggregate ignored (mean always);
    Q evaluated (and psi_AB computed) at gamma 0."""
    from annoboot.methods.bootstrapping import ema_targets

    q, reward, tokens, moves = _two_images_three_views()
    cfg = load_config(None, ["method.gamma=0.5", "method.aggregate=max"])
    y = ema_targets(cfg, reward, _FixedValues(q, tokens, moves), tokens, moves, lambda: torch.zeros(2, 5))
    # Image 0, view 2: max over moves to 0, 1 = [0.7, 0.5] -> [7/12, 5/12];
    # y = 0.5 [0.5, 0.5] + 0.5 [7/12, 5/12] = [13/24, 11/24].
    assert torch.allclose(y[0, 2], torch.tensor([13 / 24, 11 / 24]), atol=1e-6), y[0, 2]

    def no_keys():
        raise AssertionError("psi_AB computed at gamma 0")

    y = ema_targets(load_config(None, ["method.gamma=0"]), reward, None, tokens, moves, no_keys)
    assert torch.equal(y, reward.view(2, 3, 2))


# ---------------------------------------------------------------------------------------------
# Q(l | x_s, a_{s->t}): which tokens and which move each entry reads.

# Image 0's three views: top-left quarter, bottom-right quarter, whole image.
QUARTERS_AND_WHOLE = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
# Their moves s -> t (the target in the source's frame), as tokens with 25 bins over [-6, 6]:
# bin = floor((x + 6) / 12 * 25), so x = -1, 0, 0.5, 1, 2 -> 10, 12, 13, 14, 16 (no value on an edge).
HAND_MOVE_TOKENS = torch.tensor([
    [[12, 12, 14, 14], [14, 14, 16, 16], [12, 12, 16, 16]],  # from the top-left quarter: stay, (1, 1, 2, 2), (0, 0, 2, 2)
    [[10, 10, 12, 12], [12, 12, 14, 14], [10, 10, 14, 14]],  # from the bottom-right quarter: (-1, -1, 0, 0), stay, (-1, -1, 1, 1)
    [[12, 12, 13, 13], [13, 13, 14, 14], [12, 12, 14, 14]],  # from the whole image: (0, 0, .5, .5), (.5, .5, 1, 1), stay
])


def _value_function(*overrides):
    torch.manual_seed(0)
    cfg = load_config(None, ["method.action_bins=25", "method.action_range=6.0", *overrides])
    return ValueFunction(cfg, token_width=8, annotation_dim=4).eval()


def test_moves_are_the_target_boxes_in_the_source_frame_as_tokens_worked_by_hand():
    """moves[n, s, t] is the move from view s to view t. Caught break: source and target
    swapped in moves_between (the move t -> s)."""
    boxes = torch.stack([QUARTERS_AND_WHOLE, QUARTERS_AND_WHOLE.flip(0)])  # image 1: the views reversed
    moves = _value_function().moves(boxes)
    assert moves.shape == (2, 3, 3, 4)
    assert torch.equal(moves[0], HAND_MOVE_TOKENS)
    assert torch.equal(moves[1], HAND_MOVE_TOKENS.flip(0, 1))


def test_value_logits_read_view_s_tokens_with_the_move_s_to_t():
    """logits[n, s, t] = Q(. | x_s, a_{s->t}): the decoder run on view s's own tokens with the
    move s -> t alone. Every view has its own tokens, so reading view t's tokens, or the move
    t -> s, or the views view-major, changes the entry. Caught breaks: the (N*S*V) output
    reshaped (N, V, S) and transposed; source tokens read view-major."""
    value_function = _value_function()
    torch.manual_seed(1)
    tokens = torch.randn(2 * 3, 5, 8)  # image-major: row n * 3 + s holds view s of image n
    moves = torch.stack([HAND_MOVE_TOKENS, HAND_MOVE_TOKENS.flip(0, 1)])
    keys = torch.randn(4, 4)
    with torch.no_grad():
        logits = value_function.logits(tokens, moves, keys)
        assert logits.shape == (2, 3, 3, 4)
        for n in range(2):
            for s in range(3):
                for t in range(3):
                    alone = value_function.decoder(tokens[n * 3 + s][None], moves[n, s, t].view(1, 1, 4))
                    expected = value_function.score(alone, keys)[0, 0]
                    assert torch.allclose(logits[n, s, t], expected, atol=1e-5), (n, s, t)
        # The entries differ from each other, so the comparison above can tell them apart.
        assert (logits[0, 0, 1] - logits[0, 1, 0]).abs().max() > 1e-3
        assert (logits[0, 0, 1] - logits[1, 0, 1]).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# The learned scale t_AB and the bootstrap loss weight.

def test_logit_scale_is_capped_at_100_and_stops_its_gradient_there():
    """t = exp(log t) capped at 100 (as in CLIP). Caught break: the clamp removed (t grows past 100)."""
    from annoboot.models import LogitScale

    assert LogitScale(10.0)().item() == pytest.approx(10.0)
    over = LogitScale(1000.0)
    value = over()
    assert value.item() == pytest.approx(100.0)
    value.backward()
    assert over.log_scale.grad.item() == 0.0  # past the cap, no gradient pushes it further
    assert LogitScale(50.0, max_value=20.0)().item() == pytest.approx(20.0)
    # t_AB of the value function: initial method.ab_init_scale, capped at 100.
    value_function = _value_function("method.ab_init_scale=7")
    assert value_function.scale().item() == pytest.approx(7.0)
    with torch.no_grad():
        value_function.scale.log_scale.fill_(10.0)  # e^10 = 22026
    assert value_function.scale().item() == pytest.approx(100.0)


def test_ab_loss_weight_ramps_linearly_over_its_warmup_fraction_then_holds():
    """ab_weight 2, warm-up 0.1 of 100 steps: 0 at step 0, 1 at step 5, 2 from step 10 on; the
    step's loss is base + weight * bootstrap. Caught breaks: the ramp off by a step
    ((step + 1) / ramp), no cap at ab_weight, the weight not applied in the total."""
    from types import SimpleNamespace

    from annoboot.methods.bootstrapping import AnnotationBootstrapping, ab_loss_weight

    cfg = load_config(None, ["method.ab_weight=2.0", "method.ab_weight_warmup=0.1", "train.steps=100"])
    assert [ab_loss_weight(cfg, step) for step in (0, 5, 10, 50, 99)] == pytest.approx([0.0, 1.0, 2.0, 2.0, 2.0])
    assert ab_loss_weight(load_config(None, ["method.ab_weight=2.0"]), 0) == 2.0  # no warm-up: full weight at once
    method = SimpleNamespace(cfg=cfg, value_function=_value_function())
    out = AnnotationBootstrapping.bootstrapped_step(method, torch.tensor(1.0), torch.tensor(3.0), {}, step=2)
    assert out.loss.item() == pytest.approx(1.0 + 0.4 * 3.0)  # weight 2 * 2 / 10
    assert out.metrics["ab/scale"].item() == pytest.approx(10.0)


# ---------------------------------------------------------------------------------------------
# method.action_range against the images' aspect ratios.

def test_moves_past_the_action_range_are_refused_with_the_range_they_need():
    """On a 3:1 image (300 x 100 px) the crop (0, 0, 0.125, 0.4) covers 5% of the area at a
    pixel aspect of 37.5 / 40, inside the default [3/4, 4/3]; the move from it to the whole
    image is (0, 0, 8, 2.5), past R = 6, and its coordinate 8 would be clipped into the last bin.
    Caught break: the watch removed (moves clipped without a word)."""

    value_function = ValueFunction(load_config(None, []), token_width=8, annotation_dim=4)
    assert value_function.value_range == 6.0 and value_function.largest_move is None
    narrow_and_whole = torch.tensor([[[0.0, 0.0, 0.125, 0.4], [0.0, 0.0, 1.0, 1.0]]])
    value_function.moves(narrow_and_whole)
    assert value_function.largest_move.item() == pytest.approx(8.0)
    with pytest.raises(AnnobootError, match=r"'method\.action_range' is 6, but moves .* reach 8\.00 .* "
                                            r"set method\.action_range=8 or more"):
        value_function.check_move_range(value_function.largest_move.item())
    # Square quarters reach 2 (the move to the whole image, (0, 0, 2, 2)): nothing to refuse.
    square = ValueFunction(load_config(None, []), token_width=8, annotation_dim=4)
    square.moves(QUARTERS_AND_WHOLE[None])
    assert square.largest_move.item() == pytest.approx(2.0)
    square.check_move_range(square.largest_move.item())


@pytest.mark.parametrize("width, height, reaches_past_6", [(64, 64, False), (112, 63, True), (96, 32, True)],
                         ids=["square", "16:9", "3:1"])
def test_default_bootstrap_crops_reach_past_the_default_range_only_on_non_square_images(width, height, reaches_past_6):
    """The default crops (scale 0.05-1, ratio 3/4-4/3) stay within R = 6 on squares (at most
    1 / sqrt(0.05 * 0.75) = 5.16) but not on 16:9 or 3:1 images (bounds 6.9 and 8.9; 6.3 and
    8.1 reached by these 40000 crops)."""
    from annoboot.actions import sample_crop_boxes

    cfg = load_config(None, [])
    torch.manual_seed(0)
    boxes = sample_crop_boxes(torch.tensor([[height, width]] * 10000), 4, cfg.views.bootstrap_scale, cfg.views.crop_ratio)
    value_function = ValueFunction(cfg, token_width=8, annotation_dim=4)
    value_function.moves(boxes)
    reach = value_function.largest_move.item()
    assert (reach > 6.0) == reaches_past_6, reach
    assert reach < {64: 5.17, 112: 6.9, 96: 8.95}[width]


def test_asymmetric_bootstrap_views_draw_sources_and_targets_from_their_own_scales():
    """views.bootstrap_views crops per image: the first ``sources`` from the source scale (wide),
    the rest from views.bootstrap_scale (small), every one rendered."""
    from annoboot.batch import ImageBatch
    from annoboot.methods.bootstrapping import bootstrap_views
    from annoboot.views import Normalize

    cfg = load_config(None, ["views.bootstrap_views=4", "views.bootstrap_scale=[0.05, 0.2]", "views.img_size=16"])
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 40, 40), dtype=torch.uint8)
    batch = ImageBatch(images, torch.tensor([[40, 40]] * 64))
    views, boxes = bootstrap_views(batch, cfg, Normalize(cfg.views.mean, cfg.views.std), sources=1, source_scale=[0.5, 1.0])
    assert views.shape == (64 * 4, 3, 16, 16) and boxes.shape == (64, 4, 4)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    assert area[:, 0].min() >= 0.5 - 1e-5 and area[:, 1:].max() <= 0.2 + 1e-5 and area[:, 1:].min() >= 0.05 - 1e-5


def test_bootstrap_objective_reports_the_targets_entropy_and_agreement_by_the_target_boxes():
    """The metrics, worked by hand: the mean entropy (nats) of the targets, and agreement bucketed
    by the IoU of each source box with each *target* box (asymmetric moves: they differ)."""
    from annoboot.methods.bootstrapping import bootstrap_objective
    from annoboot.objectives import bootstrap_loss

    targets = torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]])  # (N=1, V=2, L=3): entropies 0 and ln 2
    logits = torch.tensor([[[[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]]]])  # (N=1, S=1, V=2, L=3): annotation 0 for both
    source = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])
    target_boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]]])  # IoU 1 and 0.25 with the source
    loss, metrics = bootstrap_objective(logits, targets, source, drop_self_pairs=False, target_boxes=target_boxes)
    assert torch.allclose(loss, bootstrap_loss(logits, targets, False))
    assert metrics["ab/target_entropy"].item() == pytest.approx(math.log(2) / 2)
    hits = {name: metrics[f"ab_agreement/iou_{name}#numerator"].item() for name in ("0", "0-0.2", "0.2-0.5", "0.5-0.8", "0.8-1")}
    counts = {name: metrics[f"ab_agreement/iou_{name}#denominator"].item() for name in hits}
    assert counts == {"0": 0, "0-0.2": 0, "0.2-0.5": 1, "0.5-0.8": 0, "0.8-1": 1}
    # argmax ties at [0.5, 0.5] go to annotation 0: both moves agree
    assert hits == {"0": 0, "0-0.2": 0, "0.2-0.5": 1, "0.5-0.8": 0, "0.8-1": 1}


# ---------------------------------------------------------------------------------------------
# Worked examples for the mutants the mutation run left (docs/results.md, "Mutation score").

def test_the_largest_move_is_kept_over_steps_and_a_move_at_the_range_is_allowed():
    """largest_move is the maximum over every call (the check runs at log steps, after many);
    a move of exactly R still has its own bin. Caught breaks: only the last call's reach kept;
    a move equal to R refused."""
    value_function = ValueFunction(load_config(None, []), token_width=8, annotation_dim=4)
    value_function.moves(torch.tensor([[[0.0, 0.0, 0.125, 0.4], [0.0, 0.0, 1.0, 1.0]]]))  # reaches 8
    value_function.moves(QUARTERS_AND_WHOLE[None])  # reaches 2
    assert value_function.largest_move.item() == pytest.approx(8.0)
    value_function.check_move_range(6.0)  # at R: allowed


def test_an_explicit_bootstrap_fraction_sets_the_bootstrap_images():
    """B 256: annotation_fraction 1 gives 256 annotation images, bootstrap_fraction 1/8 gives 32
    bootstrap images (the crowded scenes' recipe); by default ABSimCLR's B/2 annotation images
    leave 256 / 2 * 2 / 4 = 64. Caught break: B / fraction (2048)."""
    from annoboot.methods.bootstrapping import ab_batch_sizes

    cfg = load_config(None, ["train.batch_size=256", "method.annotation_fraction=1.0", "method.bootstrap_fraction=0.125"])
    assert ab_batch_sizes(cfg, base_views_per_image=2) == {"annotation": 256, "bootstrap": 32}
    assert ab_batch_sizes(load_config(None, ["train.batch_size=256"]), base_views_per_image=2) == {"annotation": 128, "bootstrap": 64}


def test_a_one_step_warm_up_starts_the_bootstrap_loss_at_zero():
    """ab_weight_warmup 0.1 of 10 steps is a ramp of one step: weight 0 at step 0, full from step 1.
    Caught break: ramps of a single step treated as none (full weight at step 0)."""
    from annoboot.methods.bootstrapping import ab_loss_weight

    cfg = load_config(None, ["method.ab_weight_warmup=0.1", "train.steps=10"])
    assert [ab_loss_weight(cfg, step) for step in (0, 1, 5)] == [0.0, 1.0, 1.0]


def test_the_bootstrap_objective_drops_self_pairs_when_asked():
    """With drop_self_pairs the moves from a view to itself leave the loss: V = 2, the pair 0 -> 0
    predicts annotation 1 and the others annotation 0. Caught break: the option not handed to the
    loss."""
    from annoboot.methods.bootstrapping import bootstrap_objective
    from annoboot.objectives import bootstrap_loss

    targets = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (N=1, V=2, L=2)
    logits = torch.tensor([[[[0.0, 4.0], [4.0, 0.0]], [[4.0, 0.0], [4.0, 0.0]]]])  # (1, S=2, V=2, L=2)
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]]])
    dropped, _ = bootstrap_objective(logits, targets, boxes, drop_self_pairs=True)
    kept, _ = bootstrap_objective(logits, targets, boxes, drop_self_pairs=False)
    assert torch.allclose(dropped, bootstrap_loss(logits, targets, True)) and not torch.allclose(dropped, kept)
    # By hand: the off-diagonal pairs are (0 -> 1) with target annotation 1 and (1 -> 0) with annotation 0.
    wrong, right = math.log1p(math.exp(4.0)), math.log1p(math.exp(-4.0))  # cross-entropies of a 4-logit margin
    assert dropped.item() == pytest.approx((wrong + right) / 2)
    assert kept.item() == pytest.approx((3 * wrong + right) / 4)


def test_the_value_function_builds_its_decoder_with_the_configured_mlp_ratio():
    """model.decoder_mlp_ratio 2 on a decoder of width 32: MLPs of 64. Caught break: the option not
    handed to the decoder (its default 4 would give 128)."""
    cfg = load_config(None, ["model.decoder_mlp_ratio=2.0", "model.decoder_dim=32", "model.decoder_heads=2"])
    value_function = ValueFunction(cfg, token_width=8, annotation_dim=4)
    assert all(block.mlp.fc1.out_features == 64 for block in value_function.decoder.blocks)


def test_bootstrap_view_options_refuse_bad_scales_by_name_and_allow_two_views():
    """Two bootstrap views per image is the fewest that make a move; a scale [high, low] is
    refused naming views.bootstrap_scale. Caught breaks: 2 refused; the key left out of the message."""
    from annoboot.errors import AnnobootError

    assert load_config(None, ["method.name=ab_simclr", "views.bootstrap_views=2"]).views.bootstrap_views == 2
    with pytest.raises(AnnobootError, match=r"'views\.bootstrap_views' must be >= 2"):
        load_config(None, ["method.name=ab_simclr", "views.bootstrap_views=1"])
    with pytest.raises(AnnobootError, match=r"'views\.bootstrap_scale'"):
        load_config(None, ["method.name=ab_simclr", "views.bootstrap_scale=[0.5, 0.2]"])


# ---------------------------------------------------------------------------------------------
# model.decoder_attention=target_box: a move reads only the source tokens of the region it leads to.

def _q_after_changing_tokens(value_function, tokens, moves, changed):
    """Q of every move before and after adding noise to the source tokens ``changed`` (indices)."""
    keys = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))
    other = tokens.clone()
    other[:, changed] += 3 * torch.randn(other[:, changed].shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return value_function.logits(tokens, moves, keys), value_function.logits(other, moves, keys)


@pytest.mark.parametrize("attention", ["all", "target_box"])
def test_target_box_attention_reads_only_the_tokens_of_the_region_a_move_leads_to(attention):
    """One source view of 4 x 4 tokens; moves to its top-left quarter (tokens 0, 1, 4, 5), to its
    bottom-right quarter and to a region wholly outside it. Noise on the other 12 tokens leaves the
    top-left move's Q unchanged under target_box and changes it under all; noise on the quarter's
    own tokens changes it under both; the move out of the view reads every token. Caught breaks:
    the mask not passed to the cross-attention, rows and columns of the grid swapped, the mask of
    one move applied to another (the bottom-right move then ignores its own tokens)."""
    value_function = _value_function(f"model.decoder_attention={attention}")
    torch.manual_seed(1)
    tokens = torch.randn(1, 16, 8)
    source = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])
    targets = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]]])
    moves = value_function.moves_between(source, targets)  # (1, 1, 3, 4)
    quarter, rest = [0, 1, 4, 5], [i for i in range(16) if i not in (0, 1, 4, 5)]
    before, after_rest = _q_after_changing_tokens(value_function, tokens, moves, rest)
    _, after_quarter = _q_after_changing_tokens(value_function, tokens, moves, quarter)
    moved = lambda a, b, t: (a[0, 0, t] - b[0, 0, t]).abs().max().item() > 1e-3  # noqa: E731
    assert moved(before, after_quarter, 0)
    assert moved(before, after_rest, 0) == (attention == "all")
    assert moved(before, after_rest, 1)  # the bottom-right move reads tokens of the rest
    assert moved(before, after_quarter, 2) and moved(before, after_rest, 2)  # out of view: every token


def test_target_box_attention_refuses_tokens_that_are_no_square_grid():
    value_function = _value_function("model.decoder_attention=target_box")
    moves = value_function.moves(torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]]]))
    with pytest.raises(AnnobootError, match="decoder_attention=target_box.*square grid, got 12 tokens"):
        value_function.logits(torch.randn(2, 12, 8), moves, torch.randn(4, 4))


def test_target_box_attention_needs_no_host_sync():
    """The region masks are built on the device each step: on the meta device any host read (a
    bool index, an ``if mask.any()``) raises, so a pass shows the option adds no sync per step.
    Caught break: box_token_mask's fallback written as ``if empty.any(): mask[empty, ...] = True``."""
    value_function = _value_function("model.decoder_attention=target_box").to("meta")
    tokens = torch.randn(6, 16, 8, device="meta", requires_grad=True)
    moves = torch.randint(0, 25, (6, 3, 4), device="meta")
    phi = value_function.values(tokens, moves)  # the masks and the decoder (scoring needs no mask)
    phi.sum().backward()
    assert phi.shape == (6, 3, 4)
