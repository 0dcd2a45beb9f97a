"""Shared fixtures. Constants, skip markers and plain helper functions live in helpers.py
(``from helpers import TINY, needs_fmnist``); tests/ is on pytest's pythonpath (pyproject.toml)."""

import pytest
from helpers import TINY

from annoboot.config import load_config


@pytest.fixture
def tiny_config(tmp_path):
    def make(*overrides: str):
        return load_config(None, TINY + [f"train.out_dir={tmp_path / 'run'}", *overrides])

    return make
