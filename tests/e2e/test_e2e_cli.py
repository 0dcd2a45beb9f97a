"""The command line end to end: bad input ends in one clear line."""

import pytest
from helpers import run_cli


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,culprit",
    [
        (["pretrain", "data.annotation.root=/nowhere/fmnist", "train.steps=1"], "/nowhere/fmnist"),
        (["pretrain", "train.stepz=3"], "train.stepz"),
        (["pretrain", "train.steps=three"], "train.steps"),
        (["pretrain", "--config", "/nowhere/recipe.yaml"], "/nowhere/recipe.yaml"),
        (["pretrain", "data.annotation.kind=image_folder", "data.annotation.root=/nowhere/images"], "/nowhere/images"),
        (["pretrain", "model.backbone=vit_nonexistent_model", "train.device=cpu"], "vit_nonexistent_model"),
        (["eval", "/nowhere/run"], "/nowhere/run"),
    ],
)
def test_bad_input_ends_in_one_clear_line(args, culprit):
    out = run_cli(*args)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("annoboot: error:")]
    assert len(lines) == 1 and culprit in lines[0], out.stderr


@pytest.mark.slow
def test_missing_fashion_mnist_says_how_to_install():
    out = run_cli("pretrain", "data.annotation.root=/nowhere/fmnist", "train.steps=1")
    assert "apt-get install dataset-fashion-mnist" in out.stderr
