"""model.value_readout=region_mean: phi_AB is one linear map of the mean of the source tokens in
the region a move leads to, with no decoder (annoboot.models.RegionMeanReadout)."""

import pytest
import torch
from helpers import one_thread  # noqa: F401  (an autouse fixture: tiny workloads run on one thread)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annoboot.errors import AnnobootError
from annoboot.methods import build_method
from annoboot.methods.bootstrapping import ValueFunction
from annoboot.models import RegionMeanReadout
from annoboot.recipe import load_config
from annoboot.train import Trainer

REGION_MEAN = ["method.action_bins=25", "method.action_range=6.0", "model.value_readout=region_mean"]
ASYMMETRIC_TARGETS = ["method.name=ab_simclr", "views.bootstrap_views=4", "views.bootstrap_source_views=1",
                      "views.bootstrap_source_scale=[0.6, 1.0]", "views.bootstrap_scale=[0.05, 0.2]",
                      "method.target_network=online", "method.bootstrap_annotations=targets"]


def _value_function(*overrides):
    torch.manual_seed(0)
    return ValueFunction(load_config(None, [*REGION_MEAN, *overrides]), token_width=8, annotation_dim=4).eval()


def test_a_move_reads_the_mean_of_its_regions_tokens_through_one_linear_map_worked_by_hand():
    """One source view of 4 x 4 tokens. The move to its top-left quarter gives head(norm(mean of
    tokens 0, 1, 4, 5)); a move wholly outside the view gives it of the mean of all 16. Caught
    breaks: the mean over every token, the mask of one move applied to another, the decoder built
    anyway (its output is no function of the pooled tokens alone)."""
    value_function = _value_function()
    readout = value_function.decoder
    assert isinstance(readout, RegionMeanReadout)
    tokens = torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(1))
    source = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])
    targets = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [2.0, 2.0, 3.0, 3.0]]])
    moves = value_function.moves_between(source, targets).flatten(0, 1)  # (1, 2, 4)
    with torch.no_grad():
        phi = value_function.values(tokens, moves)[0]
        by_hand = lambda picked: readout.head(readout.norm(tokens[0, picked].mean(0)))  # noqa: E731
        assert torch.allclose(phi[0], by_hand([0, 1, 4, 5]), atol=1e-5)
        assert torch.allclose(phi[1], by_hand(list(range(16))), atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(x0=st.floats(0.0, 0.9), y0=st.floats(0.0, 0.9), width=st.floats(0.05, 1.0), height=st.floats(0.05, 1.0),
       seed=st.integers(0, 2**16))
def test_a_moves_value_depends_on_its_regions_tokens_only_through_their_mean(x0, y0, width, height, seed):
    """For any target box in the view: noise on the tokens outside its region leaves its phi_AB
    unchanged, shuffling the tokens inside the region leaves it unchanged, and noise inside
    changes it. Caught breaks: attention over every token, a position-weighted pool."""
    value_function = _value_function()
    target = torch.tensor([[[x0, y0, min(x0 + width, 1.0), min(y0 + height, 1.0)]]])
    moves = value_function.moves_between(torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]), target).flatten(0, 1)
    region = value_function.memory_mask(moves, 16)[0, 0]
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(1, 16, 8, generator=generator)
    outside, shuffled, inside = tokens.clone(), tokens.clone(), tokens.clone()
    outside[0, ~region] += 3 * torch.randn(int((~region).sum()), 8, generator=generator)
    picked = region.nonzero().flatten()
    shuffled[0, picked] = tokens[0, picked[torch.randperm(len(picked), generator=generator)]]
    inside[0, picked] += 3 * torch.randn(len(picked), 8, generator=generator)
    with torch.no_grad():
        phi = lambda t: value_function.values(t, moves)  # noqa: E731
        assert torch.allclose(phi(outside), phi(tokens), atol=1e-5) or bool(region.all())
        assert torch.allclose(phi(shuffled), phi(tokens), atol=1e-5)
        assert not torch.allclose(phi(inside), phi(tokens), atol=1e-3)


def test_region_mean_refuses_tokens_that_are_no_square_grid_naming_its_option():
    value_function = _value_function()
    moves = value_function.moves(torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]]]))
    with pytest.raises(AnnobootError, match="value_readout=region_mean needs .*square grid, got 12 tokens"):
        value_function.logits(torch.randn(2, 12, 8), moves, torch.randn(4, 4))


def test_an_unknown_readout_is_refused_by_name():
    with pytest.raises(AnnobootError, match="value_readout"):
        load_config(None, ["method.name=ab_simclr", "model.value_readout=pooled"])


def test_region_mean_builds_no_decoder_and_trains(tiny_config):
    """ABSimCLR with the readout has a value function of one layer norm and one linear map (the
    decoder's blocks not built), and a few steps train to a finite loss whose bootstrap half is
    positive."""
    cfg = tiny_config(*ASYMMETRIC_TARGETS, "model.value_readout=region_mean", "train.steps=3", "train.log_every=3")
    value_function = build_method(cfg).value_function
    width = value_function.decoder.norm.normalized_shape[0]
    out = value_function.decoder.head.out_features
    assert sum(p.numel() for p in value_function.decoder.parameters()) == 2 * width + width * out + out
    last = Trainer(cfg).fit()
    assert torch.isfinite(torch.tensor(last["loss/total"])) and last["loss/bootstrap"] > 0


DECODER_OPTION_VALUES = {"decoder_depth": st.integers(1, 6), "decoder_dim": st.sampled_from([16, 32, 64]),
                         "decoder_heads": st.sampled_from([1, 2, 8]), "decoder_mlp_ratio": st.sampled_from([1.0, 2.0]),
                         "decoder_attention": st.just("target_box")}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=st.fixed_dictionaries({}, optional=DECODER_OPTION_VALUES),
       readout=st.sampled_from(["decoder", "region_mean"]))
def test_decoder_options_set_beside_the_region_mean_readout_are_named_as_unused(caplog, chosen, readout):
    """Any set of decoder_* options given a value of their own: with region_mean the load warns and
    names exactly those options (a default value is not named); with the decoder, or with none
    set, it is silent. Caught breaks: no warning, a warning for defaults, a warning under the decoder."""
    caplog.clear()
    overrides = [f"model.{key}={value}" for key, value in chosen.items()]
    defaults = {"decoder_depth": 4, "decoder_dim": None, "decoder_heads": 4, "decoder_mlp_ratio": 4.0,
                "decoder_attention": "all"}
    set_apart = {key for key, value in chosen.items() if value != defaults[key]}
    with caplog.at_level("WARNING", logger="annoboot.methods.bootstrapping"):
        load_config(None, ["method.name=ab_simclr", f"model.value_readout={readout}", *overrides])
    warnings = [r.getMessage() for r in caplog.records if r.name == "annoboot.methods.bootstrapping"]
    if readout == "decoder" or not set_apart:
        assert warnings == []
        return
    assert len(warnings) == 1 and "model.value_readout=region_mean" in warnings[0]
    for key in defaults:
        assert (f"model.{key}=" in warnings[0]) == (key in set_apart), (key, warnings[0])
