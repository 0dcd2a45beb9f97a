"""After training: load an encoder, embed a folder (resumably, skipping bad files), find similar
images, and the `import annoboot` surface."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import TINY, needs_fmnist
from PIL import Image

import annoboot
from annoboot import cli, embedding, pretrained, similar
from annoboot.config import SourceConfig
from annoboot.data import build_source
from annoboot.errors import AnnobootError
from annoboot.recipe import load_config
from annoboot.train import Trainer

pytestmark = needs_fmnist


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("embed_run")
    Trainer(load_config(None, TINY + ["method.name=simclr", "train.steps=2", f"train.out_dir={out}"])).fit()
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """40 real Fashion-MNIST test images as PNGs (two sub-folders) and one broken file."""
    folder = tmp_path_factory.mktemp("photos")
    images = build_source(SourceConfig(kind="fashion_mnist", split="test", limit=40)).in_memory()
    for i, image in enumerate(images):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(image[0].numpy()).save(sub / f"{i:03d}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    return folder


def test_embed_folder_writes_one_unit_row_per_readable_image_and_counts_the_bad(run_dir, photos, tmp_path):
    encoder = pretrained.load_encoder(run_dir, device="cpu")
    report = embedding.embed_folder(encoder, photos, tmp_path / "e.npz", batch_size=16, chunk_size=16, progress=False)
    assert report.embedded == 40 and sum(report.skipped.values()) == 1, report
    names, vectors, meta = similar.load_embeddings(tmp_path / "e.npz")
    assert len(names) == 40 and "broken.jpg" not in names and names[0] == "a/001.png"
    assert vectors.shape == (40, encoder.encoder.width)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(40), atol=1e-4)
    assert meta["skipped"] == report.skipped and meta["img_size"] == 32
    # The stored vector of a file is the one `embed` computes for it alone.
    alone = encoder.embed([photos / "a" / "001.png"])[0]
    assert torch.allclose(vectors[0], alone, atol=1e-4)
    # transform + the plain timm model give the same features (to bf16 rounding: embed runs
    # under bf16 autocast on CPUs with native BF16, the plain call in float32).
    with torch.no_grad():
        pooled = encoder.model(encoder.transform(photos / "a" / "001.png")[None])
    assert torch.allclose(torch.nn.functional.normalize(pooled, dim=1)[0], alone, atol=5e-3)
    assert not (tmp_path / "e.npz.parts").exists()


def test_a_killed_embedding_resumes_at_its_first_missing_chunk(run_dir, photos, tmp_path, monkeypatch):
    encoder = pretrained.load_encoder(run_dir, device="cpu")
    whole = embedding.embed_folder(encoder, photos, tmp_path / "whole.npz", chunk_size=16, progress=False)
    real_chunk = embedding._embed_chunk
    calls = []

    def killed_in_third_chunk(*args):
        calls.append(args[2])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_chunk(*args)

    monkeypatch.setattr(embedding, "_embed_chunk", killed_in_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        embedding.embed_folder(encoder, photos, tmp_path / "part.npz", chunk_size=16, progress=False)
    monkeypatch.setattr(embedding, "_embed_chunk", real_chunk)
    report = embedding.embed_folder(encoder, photos, tmp_path / "part.npz", chunk_size=16, progress=False)
    assert report.chunks_reused == 2 and report.embedded == whole.embedded
    a, b = similar.load_embeddings(tmp_path / "whole.npz"), similar.load_embeddings(tmp_path / "part.npz")
    assert a[0] == b[0] and torch.allclose(a[1], b[1])


def test_similar_finds_the_image_itself_first_in_the_folder_and_from_outside(run_dir, photos, tmp_path):
    encoder = pretrained.load_encoder(run_dir, device="cpu")
    embedding.embed_folder(encoder, photos, tmp_path / "e.npz", progress=False)
    query, found, _ = similar.find_similar(tmp_path / "e.npz", photos / "b" / "010.png", k=5)
    assert found[0].name == "b/010.png" and found[0].score == pytest.approx(1.0, abs=1e-4)
    assert [n.score for n in found] == sorted((n.score for n in found), reverse=True) and len(found) == 5
    # A file outside the folder is embedded on the fly with the encoder the file names.
    outside = tmp_path / "elsewhere" / "copy.png"
    outside.parent.mkdir()
    shutil.copy(photos / "a" / "023.png", outside)
    query, found, _ = similar.find_similar(tmp_path / "e.npz", outside, k=3)
    assert query == str(outside) and found[0].name == "a/023.png" and found[0].score > 0.999


def test_cli_embed_and_similar_write_the_npz_the_sheet_and_the_json(run_dir, photos, tmp_path, capsys):
    assert cli.main(["embed", str(run_dir), str(photos), "--out", str(tmp_path / "e.npz"), "--device", "cpu"]) == 0
    assert "40 images embedded, 1 skipped" in capsys.readouterr().out
    assert cli.main(["similar", str(tmp_path / "e.npz"), "a/005.png", "--k", "4", "--out", str(tmp_path / "n.png")]) == 0
    listing = json.loads((tmp_path / "n.json").read_text())
    assert listing["neighbours"][0]["name"] == "a/005.png" and len(listing["neighbours"]) == 4
    with Image.open(tmp_path / "n.png") as sheet:
        assert sheet.width == 5 * 112  # the query and 4 neighbours
    assert cli.main(["similar", str(tmp_path / "missing.npz"), "a/005.png", "--out", str(tmp_path / "x.png")]) == 2
    assert "embeddings not found" in capsys.readouterr().err


def test_an_exported_encoder_embeds_as_its_run_does(run_dir, photos, tmp_path):
    annoboot.export_encoder(run_dir, tmp_path / "backbone.safetensors")
    exported = annoboot.load_encoder(tmp_path / "backbone.safetensors", device="cpu")
    from_run = annoboot.load_encoder(run_dir, device="cpu")
    files = [photos / "a" / "001.png", photos / "b" / "002.png"]
    assert exported.img_size == 32
    assert torch.allclose(exported.embed(files), from_run.embed(files), atol=1e-4)


def test_the_package_surface_is_lazy_and_complete():
    # A fresh interpreter for the laziness (this one has torch already); the names resolve here.
    code = "import sys, annoboot; assert 'torch' not in sys.modules, 'import annoboot pulled in torch'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [n for n in annoboot.__all__ if not callable(getattr(annoboot, n)) and n != "__version__"] == []
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        annoboot.nope  # noqa: B018
    with pytest.raises(AnnobootError, match="image not found"):
        pretrained._as_uint8("/no/such/image.png", 32)
