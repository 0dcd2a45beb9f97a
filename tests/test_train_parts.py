"""Schedules, the EMA update and checkpoints."""

import pytest
import torch

from annoboot.train.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from annoboot.train.ema import ema_update, make_target, relative_distance
from annoboot.train.schedules import cosine, ema_momentum, warmup_cosine


def test_cosine_endpoints_and_midpoint():
    assert cosine(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine(100, 100, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine(500, 100, 0.996, 1.0) == pytest.approx(1.0)
    # Constant rate (ABCLIP): start == end.
    assert cosine(37, 100, 0.996, 0.996) == pytest.approx(0.996)


def test_ema_time_constant_follows_the_run_length():
    # Capped at 2% of the run: 6 steps of a 300-step run, 60 of a 3,000-step run...
    assert ema_momentum(0, 300, 0.996, 1.0, 0.02) == pytest.approx(1 - 1 / 6)
    assert ema_momentum(0, 3000, 0.996, 1.0, 0.02) == pytest.approx(1 - 1 / 60)
    # ...while a run of 100k steps keeps the published rate (250 steps < 2,000).
    assert ema_momentum(0, 100_000, 0.996, 1.0, 0.02) == pytest.approx(0.996)
    assert ema_momentum(0, 300, 0.996, 1.0, None) == pytest.approx(0.996)  # the rate as given
    # Annealed to the end momentum, or constant at the capped rate (ABCLIP's 0.996 -> 0.996).
    assert ema_momentum(300, 300, 0.996, 1.0, 0.02) == pytest.approx(1.0)
    assert ema_momentum(150, 300, 0.996, 0.996, 0.02) == pytest.approx(1 - 1 / 6)
    # No run is too short: at least one step, i.e. the target copies the online network.
    assert ema_momentum(0, 10, 0.996, 1.0, 0.02) == pytest.approx(0.0)


def test_warmup_then_cosine():
    lrs = [warmup_cosine(s, 100, 1.0, 0.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] < 0.01


def test_ema_update_moves_target_by_one_minus_momentum():
    online = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    target = make_target(online)
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        before = target[0].weight.clone()
        online[0].weight.add_(1.0)
        online[1].running_mean.fill_(3.0)
    ema_update(target, online, momentum=0.9)
    assert torch.allclose(target[0].weight, before + 0.1)
    assert torch.equal(target[1].running_mean, torch.full((2,), 3.0))  # buffers copied
    ema_update(target, online, momentum=1.0)  # momentum 1: frozen
    assert torch.allclose(target[0].weight, before + 0.1)


def test_target_online_distance_is_relative_to_the_online_weights():
    online = torch.nn.Linear(3, 3)
    target = make_target(online)
    assert relative_distance(target, online) == 0.0
    with torch.no_grad():
        for p in online.parameters():
            p.mul_(2)
    assert relative_distance(target, online) == pytest.approx(0.5)


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000002.pt", "ckpt-00000003.pt"]
    # A half-written file from a killed run is never taken as the latest.
    (tmp_path / "checkpoints" / "ckpt-00000004.pt.tmp").write_bytes(b"garbage")
    assert latest_checkpoint(tmp_path).name == "ckpt-00000003.pt"
