"""annoboot.train.ema: the EMA update and the target-online distance."""

import pytest
import torch

from annoboot.train.ema import ema_update, make_target, relative_distance


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
