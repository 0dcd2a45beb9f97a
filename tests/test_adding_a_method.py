"""docs/adding_a_method.md: its method file and recipe, run as written, register a new method
that loads from the recipe, refuses a mistyped option of its own and learns for a few CPU steps."""

import contextlib
import re
import sys
import types
from pathlib import Path

import pytest
from helpers import TINY, needs_fmnist

from annoboot.config import forget_schema, load_config
from annoboot.errors import AnnobootError
from annoboot.methods import METHODS
from annoboot.train.trainer import Trainer

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding_a_method.md"


def code_block(language: str) -> str:
    return re.search(rf"```{language}\n(.*?)```", DOC.read_text(), re.S).group(1)


@contextlib.contextmanager
def tutorial_method():
    """The tutorial's method file, imported as annoboot.methods.simsiam; unregistered on exit."""
    module = types.ModuleType("annoboot.methods.simsiam")
    sys.modules[module.__name__] = module
    try:
        exec(compile(code_block("python"), str(DOC), "exec"), module.__dict__)
        yield module
    finally:
        sys.modules.pop(module.__name__, None)
        METHODS.pop("simsiam", None)
        forget_schema()


@needs_fmnist
def test_the_tutorial_method_registers_loads_its_options_and_learns(tmp_path):
    with tutorial_method() as simsiam:
        assert METHODS["simsiam"] is simsiam.SimSiam
        recipe = tmp_path / "fmnist_simsiam.yaml"
        recipe.write_text(code_block("yaml"))
        cfg = load_config(recipe, TINY + ["train.steps=40", f"train.out_dir={tmp_path / 'run'}", "model.simsiam_dim=128"])
        assert cfg.method.name == "simsiam" and cfg.model.simsiam_dim == 128
        with pytest.raises(AnnobootError, match="simsiam_dimm"):
            load_config(recipe, ["model.simsiam_dimm=128"])

        trainer = Trainer(cfg)
        losses = [float(trainer.train_step()["loss/total"]) for _ in range(cfg.train.steps)]
    # SimSiam's loss starts near 0 (an untrained predictor) and falls towards -1 as it learns.
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2, losses


def test_an_unregistered_method_leaves_the_schema_and_its_options():
    with tutorial_method():
        assert load_config(None, ["method.name=simsiam"]).model.simsiam_dim == 256
    with pytest.raises(AnnobootError, match="method.name"):
        load_config(None, ["method.name=simsiam"])
    with pytest.raises(AnnobootError, match="simsiam_dim"):
        load_config(None, ["model.simsiam_dim=128"])
