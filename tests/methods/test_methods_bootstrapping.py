"""annoboot.methods.bootstrapping: the value function's moves (the no-action-tokens ablation)."""

from __future__ import annotations

import torch
from helpers import one_thread  # noqa: F401  (an autouse fixture: tiny workloads run on one thread)

from annoboot.methods.bootstrapping import ValueFunction
from annoboot.recipe import load_config


def test_without_action_tokens_every_move_is_the_same_token():
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.1, 0.2, 0.9, 0.7]]])
    with_moves = ValueFunction(load_config(None, []), token_width=8, annotation_dim=4)
    without = ValueFunction(load_config(None, ["method.action_tokens=false"]), token_width=8, annotation_dim=4)
    assert with_moves.moves(boxes).unique().numel() > 1
    moves = without.moves(boxes)
    assert moves.shape == (1, 3, 3, 4) and moves.unique().numel() == 1
