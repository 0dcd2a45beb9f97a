"""annoboot.export: an exported backbone reloads in timm with the same features."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from helpers import (
    TINY,
    TINY_VIT,
    needs_fmnist,
    one_thread,  # noqa: F401  (an autouse fixture: tiny workloads run on one thread)
)

from annoboot.export import export_backbone, load_snippet, metadata_path
from annoboot.models.encoder import build_encoder


@pytest.mark.parametrize(
    "name, kwargs, img_size",
    [(TINY_VIT[0], dict(TINY_VIT[1]), 32), ("resnet18", {}, 32)],
    ids=["vit", "resnet"],
)
def test_exported_backbone_reloads_in_timm_with_the_same_features(tmp_path, name, kwargs, img_size):
    torch.manual_seed(0)
    encoder = build_encoder(name, img_size, kwargs).eval()
    with torch.no_grad():  # move BatchNorm statistics off their defaults, so they must be saved
        encoder.backbone.train()
        encoder(torch.randn(8, 3, img_size, img_size))
        encoder.eval()

    path = export_backbone(encoder, tmp_path / "backbone", encoder.backbone_name, encoder.create_kwargs)
    assert path == tmp_path / "backbone.safetensors" and path.is_file()
    metadata = json.loads(metadata_path(path).read_text())
    assert metadata["backbone"] == name and metadata["create_kwargs"] == encoder.create_kwargs

    images = torch.randn(2, 3, img_size, img_size)
    snippet = load_snippet(path, name, metadata["create_kwargs"])
    assert "num_classes=0" in snippet
    namespace = {"images": images}
    exec(snippet, namespace)  # the snippet as printed to the user, run verbatim
    reloaded = namespace["model"].eval()
    assert isinstance(reloaded, torch.nn.Module)
    with torch.no_grad():
        expected = encoder(images).pooled
        torch.testing.assert_close(namespace["features"], expected)
        direct = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=0, **encoder.create_kwargs
        ).eval()
        torch.testing.assert_close(direct(images), expected)


# ---------------------------------------------------------------------------------------------
# The model hub's folder layout: timm alone rebuilds the model and its transform.

TIMM_ALONE = """
import json, sys
import numpy as np, timm, torch
from PIL import Image
folder, images, out = sys.argv[1], sys.argv[2:-1], sys.argv[-1]
model = timm.create_model("local-dir:" + folder, pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
with torch.no_grad():
    features = model(torch.stack([transform(Image.open(p).convert("RGB")) for p in images]))
np.save(out, torch.nn.functional.normalize(features, dim=1).numpy())
assert not any(name.split(".")[0] == "annoboot" for name in sys.modules), "annoboot was imported"
"""


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory):
    from annoboot import commands
    from annoboot.recipe import load_config

    run = tmp_path_factory.mktemp("hub") / "run"
    cfg = load_config(None, TINY + ["method.name=simclr", "train.steps=3", f"train.out_dir={run}", "eval.at_end=true",
                                    "eval.probes=[knn]", "eval.train.limit=300", "eval.test.limit=100",
                                    "data.annotation.limit=500", "train.batch_size=16"])
    commands.pretrain(cfg, command="annoboot pretrain (test)")
    return run


@pytest.mark.slow  # a fresh interpreter with timm
@needs_fmnist
def test_exported_folder_loads_in_timm_alone_with_its_transform(probed_run, tmp_path):
    import subprocess
    import sys

    import numpy as np
    import skimage.data
    from PIL import Image

    from annoboot import commands, load_encoder

    folder = commands.export_run(probed_run, tmp_path / "hub")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["num_classes"] == 0 and config["architecture"] == "vit_tiny_patch16_224"
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]  # the training size, not timm's 224 default
    assert config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5] and config["pretrained_cfg"]["crop_mode"] == "squash"

    # One image at the training size (no resampling on either side), one large and not square.
    small = tmp_path / "small.png"
    Image.fromarray(skimage.data.astronaut()).resize((32, 32), Image.Resampling.BILINEAR).save(small)
    large = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(large)
    out = tmp_path / "timm.npy"
    done = subprocess.run([sys.executable, "-c", TIMM_ALONE, str(folder), str(small), str(large), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from_timm = torch.from_numpy(np.load(out))
    from_run = load_encoder(probed_run, device="cpu").embed([small, large])
    torch.testing.assert_close(from_timm[0], from_run[0], atol=2e-3, rtol=0)  # fp32 both; same pixels in
    assert float(from_timm[1] @ from_run[1]) > 0.995  # PIL's and annoboot's bilinear resampling differ slightly
    # annoboot reads the folder too, through timm, with the same features.
    torch.testing.assert_close(load_encoder(folder, device="cpu").embed([small, large]), from_run, atol=1e-5, rtol=0)


@needs_fmnist
def test_model_card_and_single_file_carry_what_the_run_was(probed_run, tmp_path):
    from safetensors import safe_open

    from annoboot import commands
    from annoboot.errors import AnnobootError

    card = (commands.export_run(probed_run, tmp_path / "hub") / "README.md").read_text()
    figures = json.loads((probed_run / "eval.json").read_text())
    assert "license: mit" in card and "Fashion-MNIST" in card
    assert f"| knn | {figures['knn']:.2f} |" in card and "annoboot pretrain (test)" in card
    assert "| steps | 3 |" in card and "| views seen | 96 |" in card  # 3 steps x 16 images x 2 views
    hardware = json.loads((probed_run / "environment.json").read_text())["hardware"]
    assert f"| hardware | {hardware} |" in card and hardware.startswith("CPU")

    single = commands.export_run(probed_run, tmp_path / "backbone.safetensors")
    with safe_open(str(single), "pt") as f:
        data = json.loads(f.metadata()["data_config"])
    assert data["input_size"] == [3, 32, 32] and data["mean"] == [0.5, 0.5, 0.5]
    assert json.loads(metadata_path(single).read_text())["data_config"]["crop_mode"] == "squash"

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(AnnobootError, match="a_file exists and is not a folder"):
        commands.export_run(probed_run, tmp_path / "a_file")


@needs_fmnist
def test_an_export_is_probed_as_its_run_was_and_takes_probe_settings_only(tmp_path, capsys):
    """`annoboot eval EXPORT` feeds the export at its own size and normalisation (here not the
    defaults), so its probes give the run's figures; it writes no file into the export by default,
    and refuses settings the export fixes, naming them."""
    from annoboot import cli, commands
    from annoboot.recipe import load_config

    run = tmp_path / "run"
    probes = ["eval.probes=[knn]", "eval.train.limit=400", "eval.test.limit=200"]
    commands.pretrain(load_config(None, TINY + probes + [
        "method.name=simclr", "train.steps=3", f"train.out_dir={run}", "train.batch_size=16",
        "data.annotation.limit=500",
        "views.img_size=24", "views.mean=[0.2, 0.4, 0.6]", "views.std=[0.3, 0.2, 0.25]"]))
    from_run = commands.evaluate_run(run, None, overrides=probes)
    folder = commands.export_run(run, tmp_path / "hub")
    single = commands.export_run(run, tmp_path / "backbone.safetensors")
    for export in (folder, single):
        out = tmp_path / f"{export.name}.json"
        assert cli.main(["eval", str(export), *probes, "--out", str(out)]) == 0
        figures = json.loads(out.read_text())
        assert figures["knn"] == from_run["knn"] and figures["weights"] == "exported", export
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]

    capsys.readouterr()
    assert cli.main(["eval", str(folder), "model.backbone_kwargs={depth: 1}"]) == 2
    assert "not model.backbone_kwargs={depth: 1}" in capsys.readouterr().err
    assert cli.main(["eval", str(single), "--weights", "ema"]) == 2
    assert "is an exported encoder" in capsys.readouterr().err


@needs_fmnist
def test_a_cnn_run_reloads_exports_and_is_probed(tmp_path):
    """A run whose backbone takes no ViT options (`model.backbone_kwargs={}`) is read back with
    exactly those options: its saved config must not pick up the default patch_size again."""
    from annoboot import cli, commands, load_encoder
    from annoboot.recipe import load_config

    run = tmp_path / "run"
    probes = ["eval.probes=[knn]", "eval.train.limit=200", "eval.test.limit=100"]
    commands.pretrain(load_config(None, TINY + probes + [
        "model.backbone=resnet18", "model.backbone_kwargs={}", "method.name=simclr", "train.steps=2",
        f"train.out_dir={run}", "train.batch_size=8", "data.annotation.limit=100"]))
    folder = commands.export_run(run, tmp_path / "hub")
    images = [torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8) for _ in range(2)]
    torch.testing.assert_close(load_encoder(folder, device="cpu").embed(images),
                               load_encoder(run, device="cpu").embed(images), atol=1e-5, rtol=0)
    assert cli.main(["eval", str(folder), *probes, "--out", str(tmp_path / "e.json")]) == 0
    # Chance is 10%; even untrained CNN features give far more.
    assert json.loads((tmp_path / "e.json").read_text())["knn"] > 30.0
