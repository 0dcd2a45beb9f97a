"""annoboot.eval.registry: probes chosen by name, each checking its own options when a config loads."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    TINY,
    TensorSource,
    one_thread,  # noqa: F401  (an autouse fixture: tiny workloads run on one thread)
    tiny_vit,
)

from annoboot.cli import main
from annoboot.config import EvalConfig
from annoboot.errors import AnnobootError
from annoboot.eval import evaluate
from annoboot.eval.decoder_probe import DecoderHead
from annoboot.eval.map_probe import MAPHead
from annoboot.eval.registry import PROBE_REGISTRY, register_probe
from annoboot.eval.token_sets import pack_token_sets
from annoboot.recipe import load_config
from annoboot.views import Normalize


def test_the_four_probes_are_registered_with_what_they_read():
    assert {name: probe.reads_tokens for name, probe in PROBE_REGISTRY.items()} == {
        "knn": False, "linear": False, "map": True, "decoder": True}


def test_an_unknown_probe_stops_the_config_naming_the_key_and_the_known_probes():
    with pytest.raises(AnnobootError, match=r"eval\.probes.*lineaer.*choose from") as error:
        load_config(None, [*TINY, "eval.probes=[knn,lineaer]"])
    assert all(name in str(error.value).split("choose from")[1] for name in ("knn", "linear", "map", "decoder"))


@pytest.mark.parametrize("option, value", [("knn_k", 0), ("knn_temperature", 0.0), ("linear_epochs", 0),
                                           ("linear_lrs", "[0.1,-1.0]"), ("map_epochs", 0), ("map_lrs", "[]")])
def test_a_bad_option_of_a_chosen_probe_stops_the_config_naming_it(option, value):
    with pytest.raises(AnnobootError, match=f"eval.{option}"):
        load_config(None, [*TINY, f"eval.{option}={value}"])


def test_an_option_of_a_probe_not_chosen_is_not_checked():
    # The probe's own checks (here: a learning-rate grid to choose from) apply when it is chosen;
    # an option's declared range (option_ranges.py) applies always, as its type does.
    cfg = load_config(None, [*TINY, "eval.probes=[knn]", "eval.map_lrs=[]"])
    assert cfg.eval.map_lrs == []
    with pytest.raises(AnnobootError, match="eval.map_lrs"):
        load_config(None, [*TINY, "eval.probes=[knn,map]", "eval.map_lrs=[]"])
    with pytest.raises(AnnobootError, match="'eval.map_epochs' is 0"):
        load_config(None, [*TINY, "eval.probes=[knn]", "eval.map_epochs=0"])


def test_pretrain_with_a_misspelt_probe_stops_before_any_training(tmp_path, capsys):
    assert main(["pretrain", *TINY, f"train.out_dir={tmp_path / 'run'}", "eval.probes=[knn,lineaer]"]) == 2
    err = capsys.readouterr().err
    assert "lineaer" in err and "eval.probes" in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_a_registered_probe_is_chosen_by_name_and_run():
    calls = []

    def centroid_probe(train, test, train_targets, test_targets, num_outputs, cfg, common):
        centroids = torch.stack([train.pooled[train_targets == c].mean(0) for c in range(num_outputs)])
        predicted = torch.cdist(test.pooled, centroids).argmin(1)
        calls.append(len(train))
        return {"test_acc": 100.0 * (predicted == test_targets).float().mean().item()}, {}

    with pytest.raises(AnnobootError, match="centroid"):
        load_config(None, [*TINY, "eval.probes=[centroid]"])
    register_probe("centroid")(centroid_probe)
    try:
        assert load_config(None, [*TINY, "eval.probes=[centroid]"]).eval.probes == ["centroid"]
        cfg = EvalConfig(batch_size=8, probes=["centroid"])
        results = evaluate(tiny_vit(16), TensorSource(40, seed=0), TensorSource(20, seed=1), cfg, 16,
                           Normalize([0.5] * 3, [0.5] * 3), "cpu")
    finally:
        PROBE_REGISTRY.pop("centroid")
    assert calls == [40] and 0 <= results["centroid"] <= 100


@pytest.mark.parametrize("make_head", [lambda: MAPHead(8, 3, masked=True),
                                       lambda: DecoderHead(8, 3, depth=1, masked=True)])
def test_masked_token_heads_read_only_the_marked_tokens(make_head):
    torch.manual_seed(0)
    head = make_head().eval()
    tokens = torch.randn(2, 5, 8)
    valid = torch.tensor([[True, True, False, False, False], [False, False, False, True, False]])
    changed = tokens.clone()
    changed[~valid] = 100 * torch.randn(int((~valid).sum()), 8)  # anything where the mask is off
    with torch.no_grad():
        assert torch.allclose(head(pack_token_sets(tokens, valid)), head(pack_token_sets(changed, valid)), atol=1e-5)
        changed[0, 1] += torch.randn(8)  # a marked token moves the output
        assert not torch.allclose(head(pack_token_sets(tokens, valid)), head(pack_token_sets(changed, valid)))


def test_an_empty_token_set_is_refused():
    with pytest.raises(ValueError, match="at least one token"):
        pack_token_sets(torch.randn(2, 3, 4), torch.tensor([[True, False, False], [False, False, False]]))
