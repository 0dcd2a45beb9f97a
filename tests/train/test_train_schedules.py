"""annoboot.train.schedules: cosine, warmup and the EMA momentum."""

import pytest

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
