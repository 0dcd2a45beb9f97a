"""The command line: help, the pretrain -> eval -> export path, and one-line errors."""

import json
import subprocess
import sys

import pytest
import timm
import torch

from annoboot.cli import main
from conftest import TINY, needs_fmnist


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "annoboot.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("pretrain", "eval", "export"):
        assert command in out.stdout


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


@needs_fmnist
def test_pretrain_eval_export_round_trip(tmp_path, capsys):
    run = tmp_path / "run"
    overrides = TINY + ["method.name=ab_simclr", "train.steps=4", "train.log_every=2", f"train.out_dir={run}",
                        "eval.at_end=true", "eval.train.limit=500", "eval.test.limit=200", "eval.linear_epochs=2",
                        "eval.map_epochs=1"]
    assert main(["pretrain", *overrides]) == 0
    table = capsys.readouterr().out
    assert "knn" in table and "linear" in table and "map" in table
    results = json.loads((run / "eval.json").read_text())
    assert {"knn", "linear", "map"} <= set(results)
    assert (run / "config.yaml").is_file() and (run / "tensorboard").is_dir()

    assert main(["eval", str(run), "--weights", "ema", "--out", str(tmp_path / "ema.json"), "eval.probes=[knn]",
                 "eval.train.limit=300", "eval.test.limit=100"]) == 0
    assert "knn" in json.loads((tmp_path / "ema.json").read_text())

    out_file = tmp_path / "backbone.safetensors"
    assert main(["export", str(run), "--out", str(out_file)]) == 0
    meta = json.loads(out_file.with_name("backbone.safetensors.json").read_text())
    model = timm.create_model(meta["backbone"], pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file=str(out_file)), **meta["create_kwargs"]).eval()
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 192)
