"""annoboot.commands: checkpoints that do not fit give one-line errors; exports get the usual file mode."""

import json
import os
import stat

import pytest
import torch
from helpers import TINY, needs_fmnist

from annoboot import commands
from annoboot.errors import AnnobootError
from annoboot.recipe import load_config
from annoboot.train import Trainer
from annoboot.train.checkpoint import checkpoint_path, load_checkpoint

pytestmark = needs_fmnist


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained")
    cfg = load_config(None, TINY + ["method.name=simclr", "train.steps=1", f"train.out_dir={run_dir}"])
    Trainer(cfg).fit()
    return checkpoint_path(run_dir, 1)


def test_checkpoints_that_do_not_fit_give_one_line_errors(trained_checkpoint, tmp_path):
    state = load_checkpoint(trained_checkpoint)
    unknown = json.loads(json.dumps(state["config"]))
    unknown["train"]["from_the_future"] = 1
    torch.save({**state, "config": unknown}, tmp_path / "unknown_key.pt")
    with pytest.raises(AnnobootError, match=r"unknown_key\.pt.*another annoboot version.*train\.from_the_future"):
        commands.load_run(tmp_path / "unknown_key.pt")

    deeper = json.loads(json.dumps(state["config"]))
    deeper["model"]["backbone_kwargs"]["depth"] = 3
    torch.save({**state, "config": deeper}, tmp_path / "other_model.pt")
    with pytest.raises(AnnobootError, match=r"online weights in .*other_model\.pt do not match the model its config builds"):
        commands.export_run(tmp_path / "other_model.pt", tmp_path / "out.safetensors")

    torch.save({"method": state["method"]}, tmp_path / "no_config.pt")
    with pytest.raises(AnnobootError, match=r"no_config\.pt is not an annoboot training checkpoint"):
        commands.evaluate_run(tmp_path / "no_config.pt", None)


def test_exports_get_the_usual_file_mode(trained_checkpoint, tmp_path):
    written = commands.export_run(trained_checkpoint, tmp_path / "backbone.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask


def test_weights_ema_loads_exactly_the_ema_target_and_online_the_online_weights(tmp_path):
    """A checkpoint whose EMA target differs from the online weights in every tensor:
    --weights ema must give back the target's tensors exactly, --weights online the online ones.
    Caught break: the two state dicts swapped (or the online weights loaded for both)."""
    from annoboot.config import to_dict
    from annoboot.methods import build_method
    from annoboot.train.ema import make_target

    cfg = load_config(None, TINY + ["method.name=ab_simclr", f"train.out_dir={tmp_path / 'run'}"])
    torch.manual_seed(0)
    method = build_method(cfg)
    target = make_target(method)
    with torch.no_grad():
        for i, tensor in enumerate(target.state_dict().values()):
            if tensor.is_floating_point():
                tensor.add_(1.0 + i)  # every float tensor moved, each by its own amount
            else:
                tensor.add_(1)  # BatchNorm's batch counts
    online_state, ema_state = method.state_dict(), target.state_dict()
    torch.save({"config": to_dict(cfg), "method": online_state, "target": ema_state}, tmp_path / "run.pt")
    for weights, expected in (("ema", ema_state), ("online", online_state)):
        _, loaded, _ = commands.load_run(tmp_path / "run.pt", weights)
        state = loaded.state_dict()
        assert state.keys() == expected.keys()
        for name, tensor in state.items():
            assert torch.equal(tensor.cpu(), expected[name]), (weights, name)
    assert not torch.equal(online_state["value_function.scale.log_scale"], ema_state["value_function.scale.log_scale"])
