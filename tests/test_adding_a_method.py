"""docs/adding_a_method.md: its method file and recipe, run as written, register a new method
that loads from the recipe, refuses a mistyped option of its own and learns for a few CPU steps."""

import contextlib
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from helpers import TINY, needs_fmnist

from annoboot.errors import AnnobootError
from annoboot.methods import METHODS
from annoboot.recipe import forget_schema, load_config
from annoboot.train.trainer import Trainer

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding_a_method.md"


def code_block(language: str) -> str:
    return re.search(rf"```{language}\n(.*?)```", DOC.read_text(), re.S).group(1)


@contextlib.contextmanager
def tutorial_method(edit=lambda code: code):
    """The tutorial's method file (through ``edit``), imported as annoboot.methods.simsiam;
    unregistered on exit."""
    module = types.ModuleType("annoboot.methods.simsiam")
    sys.modules[module.__name__] = module
    try:
        exec(compile(edit(code_block("python")), str(DOC), "exec"), module.__dict__)
        yield module
    finally:
        sys.modules.pop(module.__name__, None)
        METHODS.pop("simsiam", None)
        forget_schema()


def without_stop_gradient(code: str) -> str:
    edited = code.replace("z.detach().view", "z.view")
    assert edited != code, "the tutorial's stop-gradient moved: update this test"
    return edited


def train_and_measure_spread(tmp_path, edit, name: str):
    """(losses of 40 steps, mean over dimensions of the std over 256 test images of the
    normalised projection): about 1/sqrt(dim) when spread out, 0 when collapsed."""
    import torch.nn.functional as F

    from annoboot.data import build_source
    from annoboot.data.batching import pad_collate
    from annoboot.views import render_full_images

    with tutorial_method(edit):
        recipe = tmp_path / "fmnist_simsiam.yaml"
        recipe.write_text(code_block("yaml"))
        torch.manual_seed(0)
        cfg = load_config(recipe, TINY + ["train.steps=40", f"train.out_dir={tmp_path / name}", "model.simsiam_dim=128"])
        trainer = Trainer(cfg)
        losses = [float(trainer.train_step()["loss/total"]) for _ in range(cfg.train.steps)]
        method = trainer.method.eval()
        source = build_source(cfg.eval.test)
        batch, _ = pad_collate([(source.load(i)[0], None) for i in range(256)])
        with torch.no_grad():
            z = method.projector(method.encoder(render_full_images(batch, cfg.views.img_size, method.normalize)).pooled)
    return losses, F.normalize(z, dim=1).std(dim=0).mean().item()


# Measured 2026-12-05, one thread, seed 0, 40 steps: std 0.022 with the stop-gradient, 0.0018
# without (1/sqrt(128) = 0.088 would be fully spread); last loss -0.78 and -0.98. The two
# thresholds (0.012 and 0.006) keep the versions apart by 2x.
def test_the_tutorial_method_registers_and_loads_its_options(tmp_path):
    with tutorial_method() as simsiam:
        assert METHODS["simsiam"] is simsiam.SimSiam
        recipe = tmp_path / "fmnist_simsiam.yaml"
        recipe.write_text(code_block("yaml"))
        cfg = load_config(recipe, TINY + ["model.simsiam_dim=128"])
        assert cfg.method.name == "simsiam" and cfg.model.simsiam_dim == 128
        with pytest.raises(AnnobootError, match="simsiam_dimm"):
            load_config(recipe, ["model.simsiam_dimm=128"])


@pytest.mark.slow  # 40 training steps
@needs_fmnist
def test_the_tutorial_method_learns_and_keeps_its_projections_apart(tmp_path):
    losses, spread = train_and_measure_spread(tmp_path, lambda code: code, "as_written")
    # SimSiam's loss starts near 0 (an untrained predictor) and falls towards -1 as it learns.
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2, losses
    assert spread > 0.012, spread  # and the projections stay apart (the test below: without
    # the stop-gradient the loss falls as well, further, and they collapse)


@pytest.mark.slow
@needs_fmnist
def test_the_tutorial_method_collapses_without_its_stop_gradient(tmp_path):
    """The loss alone cannot tell the two versions apart: both drive it down."""
    losses, spread = train_and_measure_spread(tmp_path, without_stop_gradient, "no_stop_gradient")
    assert losses[-1] < -0.95 and spread < 0.006, (losses[-1], spread)


def test_an_unregistered_method_leaves_the_schema_and_its_options():
    with tutorial_method():
        assert load_config(None, ["method.name=simsiam"]).model.simsiam_dim == 256
    with pytest.raises(AnnobootError, match="method.name"):
        load_config(None, ["method.name=simsiam"])
    with pytest.raises(AnnobootError, match="simsiam_dim"):
        load_config(None, ["model.simsiam_dim=128"])


def test_the_tutorial_probe_registers_checks_its_option_and_scores_separable_features():
    from annoboot.config import EvalConfig
    from annoboot.eval.features import Features
    from annoboot.eval.fitting import SINGLE_LABEL
    from annoboot.eval.probes import run_probes
    from annoboot.eval.registry import PROBE_REGISTRY

    block = next(b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S) if "register_probe" in b)
    try:
        exec(compile(block, str(DOC), "exec"), {})
        assert load_config(None, [*TINY, "eval.probes=[knn,centroid]"]).eval.probes == ["knn", "centroid"]
        with pytest.raises(AnnobootError, match="eval.knn_temperature"):
            load_config(None, [*TINY, "eval.probes=[centroid]", "eval.knn_temperature=0"])
        # Each class a direction plus noise: the nearest class mean is right every time.
        generator = torch.Generator().manual_seed(0)
        labels = torch.arange(60) % 3
        pooled = 5 * torch.eye(3)[labels] + 0.1 * torch.randn(60, 3, generator=generator)
        train, test = Features(pooled[:45], None, labels[:45]), Features(pooled[45:], None, labels[45:])
        results = run_probes(train, test, train.labels, test.labels, 3, EvalConfig(probes=["centroid"]), SINGLE_LABEL, "cpu")
        assert results["centroid"] == 100.0
        renamed = run_probes(train, test, train.labels, (test.labels + 1) % 3, 3, EvalConfig(probes=["centroid"]),
                             SINGLE_LABEL, "cpu")
        assert renamed["centroid"] == 0.0  # scored against the test labels given
    finally:
        PROBE_REGISTRY.pop("centroid", None)
