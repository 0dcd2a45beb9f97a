"""The suite's own set-up: in CI a missing data set fails its tests instead of skipping them,
every test computes on one thread, and each test has a time limit."""

import os

import helpers
import torch


def skips_when_missing(ci: str):
    mark = helpers.needs_data(False, "data set X is missing", environ={"CI": ci})
    assert mark.kwargs["reason"] == "data set X is missing"
    return mark.args[0]  # the skip condition


def test_a_missing_data_set_skips_outside_ci_and_fails_in_it():
    assert skips_when_missing("") is True and skips_when_missing("false") is True
    assert skips_when_missing("true") is False and skips_when_missing("1") is False  # runs, and fails
    assert helpers.needs_data(True, "present", environ={"CI": ""}).args[0] is False


def test_every_test_runs_on_one_thread():
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
