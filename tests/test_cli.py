"""The command line: help, the pretrain -> eval -> export path, and a recipe run from the CLI
(the one-line errors of bad input are end-to-end tests: tests/e2e/test_e2e_cli.py)."""

import json

import pytest
import timm
import torch
from helpers import TINY, TINY_TEXT, needs_fmnist, needs_openclipart, run_cli

from annoboot.cli import main


def test_help_lists_the_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("pretrain", "eval", "export"):
        assert command in out.stdout


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


RECIPE_TINY = TINY_TEXT + [
    "model.backbone_kwargs={patch_size: 8, depth: 2}",
    "model.decoder_depth=1",
    "views.img_size=32",
    "train.device=cpu",
    "train.progress=false",
    "train.steps=3",
    "train.batch_size=32",
    "train.warmup_steps=1",
    "data.annotation.num_workers=0",
    "data.annotation.limit=256",
    "eval.train.num_workers=0",
    "eval.test.num_workers=0",
    "eval.train.limit=128",
    "eval.test.limit=64",
    "eval.retrieval.limit=40",
    "eval.probes=[knn]",
]


@pytest.mark.slow  # a recipe end to end, its probes included
@needs_openclipart
def test_openclipart_ab_clip_recipe_runs_end_to_end_from_the_cli(tmp_path, capsys):
    import json

    from annoboot.cli import main

    method = "ab_clip"  # the CLIP recipe is the same but for the method (tested above)
    run_dir = tmp_path / method
    code = main(["pretrain", "--config", f"configs/openclipart_{method}.yaml", *RECIPE_TINY, f"train.out_dir={run_dir}"])
    assert code == 0
    results = json.loads((run_dir / "eval.json").read_text())
    assert 0 <= results["zero_shot"] <= 100 and results["zero_shot_chance"] == pytest.approx(100 / 22)
    assert results["retrieval"]["num_pairs"] == 40
    assert "zero-shot" in capsys.readouterr().out


@needs_fmnist
def test_eval_of_a_run_on_crowded_scenes_reports_the_in_context_probes(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", *TINY, "method.name=simclr", "train.steps=2", f"train.out_dir={run}", "eval.at_end=false"]) == 0
    scenes = ["eval.train.kind=fmnist_scenes", "eval.test.kind=fmnist_scenes", "eval.test.split=test",
              "eval.train.scenes.preset=crowded", "eval.test.scenes.preset=crowded", "eval.train.scenes.num_scenes=60",
              "eval.test.scenes.num_scenes=30", "eval.train.scenes.pool_limit=600", "eval.test.scenes.pool_limit=600",
              "eval.probes=[knn,linear]", "eval.linear_epochs=2", "eval.knn_k=5"]
    capsys.readouterr()
    assert main(["eval", str(run), "--out", str(tmp_path / "eval.json"), *scenes]) == 0
    printed = capsys.readouterr().out
    assert "(b') in context top-1 %" in printed and "(c') scenes in context mAP %" in printed
    results = json.loads((tmp_path / "eval.json").read_text())
    in_context = results["scene_probes"]["in_context"]
    assert in_context["context"]["resolution"] == 64 and 0 <= in_context["linear"] <= 100
    assert in_context["num_test"] >= 30 * 4  # every item of the 30 test scenes (4 to 6 each)
    assert set(results["scene_probes"]) == {"in_context", "scenes_in_context"}
    assert main(["eval", str(run), *scenes, "eval.scene_probes=[in_contxt]"]) != 0
    assert "eval.scene_probes" in capsys.readouterr().err
