"""Every numeric option declares its range, and a value outside it (negative, zero where a
positive is needed, above one for a fraction, NaN, infinite, huge) stops at load with one line
naming the key: walked over every option of every registered method, source and probe."""

import math
import os

import pytest
from helpers import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annoboot.cli import main
from annoboot.errors import AnnobootError
from annoboot.option_ranges import INT_LIMIT, Range, check_ranges, ranged_options, unranged_numeric_options
from annoboot.recipe import load_config

# Every section filled: the bootstrap and retrieval sources exist only when set.
FULL = ["data.bootstrap={kind: fmnist_scenes}", "eval.retrieval={kind: openclipart}"]
FULL_CONFIG = load_config(None, FULL)
OPTIONS = sorted((key, allowed, value) for key, allowed, value in ranged_options(FULL_CONFIG))
INTEGER = {key for key, _, value in OPTIONS if isinstance(value, int) or (isinstance(value, list) and value
                                                                       and all(isinstance(v, int) for v in value))}


def test_every_numeric_option_declares_its_range():
    assert unranged_numeric_options(FULL_CONFIG) == []
    assert len(OPTIONS) > 100  # methods, sources (every kind's options), scenes, probes, core


def test_every_default_is_in_its_range():
    check_ranges(FULL_CONFIG)


def outside(allowed: Range, integer: bool) -> st.SearchStrategy:
    """Values ``allowed`` refuses: below its low end, at an open end, above its high end, not
    finite, or huge (beyond 32 bits, or a float beyond a million)."""
    bad = [st.just(math.nan), st.just(math.inf), st.just(-math.inf), st.just(1e40 if not integer else 2**40)]
    if allowed.low is not None:
        below = st.integers(-10**6, math.ceil(allowed.low) - 1) if integer else st.floats(-1e6, allowed.low, exclude_max=True)
        bad.append(below)
        if allowed.low_open:
            bad.append(st.just(int(allowed.low) if integer else float(allowed.low)))
    if allowed.high is not None:
        above = st.integers(math.floor(allowed.high) + 1, 10**6) if integer else st.floats(allowed.high, 1e6, exclude_min=True)
        bad.append(above)
        if allowed.high_open:
            bad.append(st.just(allowed.high))
    return st.one_of(bad)


def as_override(key: str, current, bad) -> str:
    text = {math.inf: ".inf", -math.inf: "-.inf"}.get(bad, ".nan" if isinstance(bad, float) and math.isnan(bad) else repr(bad))
    if isinstance(current, list):
        items = [repr(v) for v in current] or ["1"]
        items[-1] = text
        return f"{key}=[{', '.join(items)}]"
    return f"{key}={text}"


@st.composite
def out_of_range_override(draw):
    key, allowed, value = draw(st.sampled_from(OPTIONS))
    return key, as_override(key, value, draw(outside(allowed, key in INTEGER)))


# Draws per suite run (about 16 ms each); ANNOBOOT_PROPERTY_EXAMPLES=2000 for a deep run.
EXAMPLES = int(os.environ.get("ANNOBOOT_PROPERTY_EXAMPLES", "200"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(out_of_range_override())
def test_an_out_of_range_value_stops_at_load_with_one_line_naming_the_key(case):
    key, override = case
    with pytest.raises(AnnobootError) as raised:
        load_config(None, FULL + [override])
    message = str(raised.value)
    assert key in message and "\n" not in message, (override, message)


def test_the_command_line_refuses_it_before_anything_starts(tmp_path, capsys):
    run = tmp_path / "run"
    for override in ("train.lr=-0.001", "method.temperature=0", "data.annotation.max_bad_fraction=1.5",
                     "views.crop_scale=[0.08, .nan]", "eval.knn_k=0", "train.batch_size=8589934592"):
        assert main(["pretrain", *TINY, f"train.out_dir={run}", override]) == 2
        err = capsys.readouterr().err
        assert override.split("=")[0] in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert not run.exists()  # no run started: not even its folder


@pytest.mark.parametrize("allowed, inside, outside_", [
    (Range(0, low_open=True), [1e-9, 5], [0, -1]),
    (Range(0, 1, low_open=True), [1e-9, 1], [0, 1.0001]),
    (Range(0, 1, high_open=True), [0, 0.999], [1, -0.1]),
    (Range(2), [2, 100], [1.999]),
])
def test_ranges_say_what_they_hold(allowed, inside, outside_):
    assert all(allowed.contains(v) for v in inside) and not any(allowed.contains(v) for v in outside_)
    assert str(Range(0, 1, low_open=True)) == "(0, 1]" and str(Range(1)) == ">= 1" and INT_LIMIT == 2**31 - 1
