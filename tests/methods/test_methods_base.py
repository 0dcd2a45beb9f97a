"""annoboot.methods.base: views per step and the batch split every method checks."""

import pytest
from helpers import TINY, TINY_TEXT, needs_fmnist

from annoboot.errors import AnnobootError
from annoboot.methods import build_method
from annoboot.recipe import load_config

pytestmark = needs_fmnist


@pytest.mark.parametrize("base,extra", [("simclr", []), ("dino", ["views.local_views=2", "model.dino_prototypes=64"]),
                                        ("clip", TINY_TEXT)])
def test_an_ab_step_renders_as_many_views_as_its_base_step(tiny_config, base, extra):
    views = {name: build_method(tiny_config(f"method.name={name}", *extra)).views_per_step() for name in (base, f"ab_{base}")}
    assert views[base] == views[f"ab_{base}"], views
    # The published 1/8 split is still there to be asked for (ABSimCLR: 25% fewer views).
    if base == "simclr":
        published = build_method(tiny_config("method.name=ab_simclr", "method.bootstrap_fraction=0.125"))
        assert published.views_per_step() == 0.75 * views["simclr"]


@pytest.mark.parametrize("method, batch", [("simclr", 1), ("ab_simclr", 1), ("ab_simclr", 2), ("clip", 1)])
def test_batches_too_small_to_contrast_are_refused(method, batch):
    cfg = load_config(None, TINY + [f"method.name={method}", f"train.batch_size={batch}"])
    with pytest.raises(AnnobootError, match=rf"train\.batch_size {batch}.* gives {method} \d annotation image\(s\).*at least 2"):
        build_method(cfg)
