"""Shared fixtures. Constants, skip markers and plain helper functions live in helpers.py
(``from helpers import TINY, needs_fmnist``); tests/ is on pytest's pythonpath (pyproject.toml)."""

import os

import pytest
import torch
from helpers import TINY

from annoboot.recipe import load_config

# Every test computes on one thread, whatever the runner: under pytest-xdist (scripts/test.sh
# runs one worker per core) two workers of two threads each on 2 cores would fight over them
# (spinning OpenMP threads slow small ops down a hundredfold), and the learning tests' margins
# were measured on one thread: the same run on another thread count sums in another order.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


SLOW_TEST_TIMEOUT = 1200  # seconds; pyproject.toml sets 300 for every other test


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT))


@pytest.fixture
def tiny_config(tmp_path):
    def make(*overrides: str):
        return load_config(None, TINY + [f"train.out_dir={tmp_path / 'run'}", *overrides])

    return make
