"""The value-map localisation score: exact on hand-made value functions, chance without moves."""

import pytest
import torch
from helpers import SCENES, TINY, needs_fmnist

from annoboot.data.scenes import SceneSource
from annoboot.errors import AnnobootError
from annoboot.eval.localisation import (
    centres_inside,
    enlarged_boxes,
    item_tops_its_scene,
    localisation_score,
    reward_tops_its_scene,
    scene_share,
    score_moves,
    summarise,
)
from annoboot.eval.value_maps import grid_boxes
from annoboot.methods import build_method
from annoboot.recipe import load_config


def test_a_value_function_that_knows_the_box_scores_every_item_and_a_constant_one_scores_chance():
    boxes = grid_boxes(8, 1 / 8).reshape(-1, 4)
    items = [torch.tensor([0.1, 0.2, 0.45, 0.6]), torch.tensor([0.5, 0.5, 1.0, 1.0]), torch.tensor([0.0, 0.0, 0.3, 0.3])]
    knows, constant = [], []
    for box in items:
        in_box = centres_inside(boxes, box)
        m = int(in_box.sum())
        assert 0 < m < 64
        knows.append(score_moves(in_box.float() + 0.01 * torch.rand(64), in_box))
        constant.append(score_moves(torch.full((64,), 0.3), in_box))
        assert constant[-1].chance_hit == pytest.approx(m / 64)
        assert constant[-1].chance_best_rank == pytest.approx(65 / (m + 1))
    best, flat = summarise(knows), summarise(constant)
    assert best["hit_rate"] == 100.0 and best["mean_best_rank"] == 1.0
    assert flat["hit_rate"] == pytest.approx(flat["chance_hit_rate"])
    assert flat["mean_best_rank"] == pytest.approx(flat["chance_mean_best_rank"])
    # A value function pointing away from the box: no hit, and the best in-box move ranks last of all.
    worst = score_moves(-centres_inside(boxes, items[0]).float(), centres_inside(boxes, items[0]))
    assert worst.hit == 0.0 and worst.best_rank == 64 - int(centres_inside(boxes, items[0]).sum()) + 1


def test_scene_share_and_item_in_scene_hits_worked_by_hand():
    """6 annotations, the scene's own items are columns 2, 3, 4. Q at 3 moves: the share on the own
    columns is (0.6 + 0.9 + 0.3) / 3; at the two moves into item 3's box, column 3 tops the own
    columns at one of them. Caught breaks: the share taken over the columns of other scenes, the
    argmax index read as a column of the whole set (it indexes the own columns)."""
    probs = torch.tensor([[0.2, 0.2, 0.1, 0.4, 0.1, 0.0],
                          [0.0, 0.1, 0.6, 0.2, 0.1, 0.0],
                          [0.5, 0.2, 0.1, 0.1, 0.1, 0.0]])
    own = [2, 3, 4]
    assert scene_share(probs, own) == pytest.approx((0.6 + 0.9 + 0.3) / 3)
    assert item_tops_its_scene(probs[:2], own, column=3) == pytest.approx(0.5)
    assert item_tops_its_scene(probs[1:2], own, column=2) == 1.0


def test_the_reward_around_an_item_tops_it_worked_by_hand():
    """Three items' crops, three crops around them: the first two around-crops point at their own
    item (cosine, not dot product: the third item's crop is long and aligned with the first), the
    third at the first item. Caught breaks: dot products (the long third crop would win row 0),
    rows compared against the wrong item."""
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [10.0, 1.0]])
    around = torch.tensor([[1.0, -0.05], [0.1, 1.0], [1.0, -0.1]])
    assert reward_tops_its_scene(around, items).tolist() == [1.0, 1.0, 0.0]


def test_enlarged_boxes_keep_the_centre_scale_the_side_and_stay_in_the_image():
    boxes = torch.tensor([[0.2, 0.2, 0.4, 0.6], [0.0, 0.9, 0.2, 1.0]])
    out = enlarged_boxes(boxes, 1.5)
    assert torch.allclose(out[0], torch.tensor([0.15, 0.1, 0.45, 0.7]))
    assert torch.allclose(out[1], torch.tensor([0.0, 0.875, 0.25, 1.0]))  # clipped at the image's edges


def test_no_item_inside_any_centre_is_skipped():
    boxes = grid_boxes(2, 0.5).reshape(-1, 4)
    assert score_moves(torch.rand(4), centres_inside(boxes, torch.tensor([0.0, 0.0, 0.1, 0.1]))) is None


@needs_fmnist
def test_a_run_without_action_tokens_scores_exactly_chance_and_one_with_them_differs():
    source = SceneSource(SCENES, "test")
    overrides = TINY + ["method.name=ab_simclr", "views.img_size=32"]
    flat = build_method(load_config(None, overrides + ["method.action_tokens=false"])).eval()
    score = localisation_score(flat, source, grid=6, scenes=12)
    assert score["items"] >= 24
    assert score["hit_rate"] == pytest.approx(score["chance_hit_rate"], abs=1e-6)
    assert score["mean_best_rank"] == pytest.approx(score["chance_mean_best_rank"], abs=1e-6)
    moving = build_method(load_config(None, overrides)).eval()
    other = localisation_score(moving, source, grid=6, scenes=12)
    assert other["mean_best_rank"] != pytest.approx(other["chance_mean_best_rank"], abs=1e-6)
    # Q the same at every move: at the moves into an item's box, one item of each scene tops its
    # scene's items at every move and the others at none; the share on a scene's items is a share.
    assert 0 < score["item_in_scene_hit_rate"] < 100 and 0 < score["scene_share"] < 100
    assert 0 < score["chance_scene_share"] < 100 and 0 < score["chance_item_in_scene_hit_rate"] <= 100
    # The reward's own view (no Q): a crop around an item is most like that item's crop above
    # chance even for an untrained encoder (the pixels overlap), and the two runs share nothing of Q.
    assert score["reward_item_in_scene_hit_rate"] > score["chance_reward_item_in_scene_hit_rate"]


def test_a_method_without_item_annotations_is_refused_naming_the_methods_that_have_them():
    method = build_method(load_config(None, TINY + ["method.name=simclr"]))
    with pytest.raises(AnnobootError, match=r"images or captions \(ab_clip, ab_simclr: .*this run is simclr"):
        localisation_score(method, SceneSource(SCENES, split="test"))
