"""Text for caption models: embed_text in the Python API, `annoboot similar EMB --text`,
`annoboot zero-shot`, and the text tower carried by an export, on a tiny CLIP run trained on a
captioned folder of coloured squares ("a red square", ...): each sentence must find its colour."""

import json

import numpy as np
import pytest
import torch
from helpers import TINY, TINY_TEXT, one_thread  # noqa: F401 (one_thread: an autouse fixture)
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from annoboot import commands, load_encoder
from annoboot.cli import main
from annoboot.errors import AnnobootError
from annoboot.recipe import load_config
from annoboot.text_search import parse_labels

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


@pytest.fixture(scope="module")
def colour_runs(tmp_path_factory):
    """A captioned folder (16 noisy squares per colour, each with its .txt caption), a CLIP run
    trained on it for 30 steps, and a SimCLR run of one step (no text tower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before the autouse one_thread; tiny work wants one
    root = tmp_path_factory.mktemp("text")
    folder = root / "squares"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        for i in range(16):
            pixels = np.clip(np.array(rgb)[None, None] + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i:02d}.png")
            (folder / f"{name}_{i:02d}.txt").write_text(f"a {name} square")
    common = TINY + ["data.annotation.limit=null", "data.annotation.num_workers=0", "train.batch_size=32"]
    commands.pretrain(load_config(None, common + TINY_TEXT + [
        "method.name=clip", "data.annotation.kind=captioned_folder", f"data.annotation.root={folder}",
        "train.steps=30", "train.lr=2e-3", f"train.out_dir={root / 'clip'}"]))
    commands.pretrain(load_config(None, common + [
        "method.name=simclr", "data.annotation.kind=image_folder", f"data.annotation.root={folder}",
        "train.steps=1", f"train.out_dir={root / 'simclr'}"]))
    torch.set_num_threads(threads)
    return folder, root / "clip", root / "simclr"


def colour_of(name: str) -> str:
    return name.split("/")[-1].split("_")[0]


def test_each_sentence_finds_its_colour_through_the_python_api(colour_runs):
    folder, clip_run, _ = colour_runs
    encoder = load_encoder(clip_run, device="cpu")
    files = sorted(folder.glob("*.png"))
    images = encoder.embed_joint(files)
    texts = encoder.embed_text([f"a {name} square" for name in COLOURS])
    assert texts.shape == (4, 64) and torch.allclose(texts.norm(dim=1), torch.ones(4), atol=1e-5)
    for row, name in enumerate(COLOURS):
        best = (images @ texts[row]).topk(16).indices
        assert {colour_of(files[i].name) for i in best.tolist()} == {name}, name
    with pytest.raises(AnnobootError, match="list of sentences"):
        encoder.embed_text("a red square")


def test_similar_by_text_and_zero_shot_from_the_command_line(colour_runs, tmp_path, capsys):
    folder, clip_run, _ = colour_runs
    embeddings = tmp_path / "squares.npz"
    assert main(["embed", str(clip_run), str(folder), "--out", str(embeddings), "--device", "cpu"]) == 0
    with np.load(embeddings) as saved:
        assert saved["joint"].shape == (64, 64) and saved["embeddings"].shape == (64, 192)
    capsys.readouterr()
    sheet = tmp_path / "blue.png"
    assert main(["similar", str(embeddings), "--text", "a blue square", "--k", "8", "--out", str(sheet)]) == 0
    listing = json.loads(sheet.with_suffix(".json").read_text())
    assert [colour_of(n["name"]) for n in listing["neighbours"]] == ["blue"] * 8
    assert listing["query"] == "text: a blue square" and sheet.is_file()

    out = tmp_path / "labels.json"
    assert main(["zero-shot", str(clip_run), str(folder), "--labels", "red square,green square,blue square,yellow square",
                 "--top", "2", "--out", str(out), "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert len(result["images"]) == 64 and all(len(item["labels"]) == 2 for item in result["images"])
    right = sum(item["labels"][0]["label"] == f"{colour_of(item['image'])} square" for item in result["images"])
    assert right / 64 > 0.75  # chance: 0.25
    first = result["images"][0]["labels"]
    assert first[0]["score"] >= first[1]["score"] and 0 < first[0]["score"] <= 1


def test_an_export_carries_the_text_tower(colour_runs, tmp_path):
    _, clip_run, _ = colour_runs
    folder = commands.export_run(clip_run, tmp_path / "exported")
    assert (folder / "text_tower.safetensors").is_file() and (folder / "text_config.json").is_file()
    assert "embed_text" in (folder / "README.md").read_text()
    sentences = ["a red square", "a yellow square"]
    from_run = load_encoder(clip_run, device="cpu")
    from_folder = load_encoder(folder, device="cpu")
    torch.testing.assert_close(from_folder.embed_text(sentences), from_run.embed_text(sentences), atol=1e-5, rtol=0)
    pooled = torch.randn(3, 192)  # the image projection travels too
    torch.testing.assert_close(from_folder.text.project(pooled), from_run.text.project(pooled), atol=1e-5, rtol=0)


def test_models_without_a_text_tower_say_so_in_one_line(colour_runs, tmp_path, capsys):
    folder, _, simclr_run = colour_runs
    with pytest.raises(AnnobootError, match="has no text tower"):
        load_encoder(simclr_run, device="cpu").embed_text(["a red square"])
    embeddings = tmp_path / "plain.npz"
    assert main(["embed", str(simclr_run), str(folder), "--out", str(embeddings), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["similar", str(embeddings), "--text", "a red square", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "holds image features only" in err and "Traceback" not in err
    assert main(["zero-shot", str(simclr_run), str(folder), "--labels", "a,b", "--device", "cpu"]) == 2
    assert "has no text tower" in capsys.readouterr().err
    assert main(["similar", str(embeddings), "--out", str(tmp_path / "x.png")]) == 2  # neither an image nor --text
    assert "give an image or --text" in capsys.readouterr().err


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=6), max_size=6))
def test_labels_parse_to_their_names_or_a_one_line_error(names):
    text = ",".join(names)
    try:
        labels = parse_labels(text, None)
    except AnnobootError as exc:
        assert "--labels" in str(exc) and "\n" not in str(exc)
        return
    assert labels == [n.strip() for n in text.split(",") if n.strip()] and len(labels) >= 2 and len(set(labels)) == len(labels)


def test_a_labels_file_skips_blank_lines_and_comments(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("# fashion\nbag\n\n  shoe  \n")
    assert parse_labels(None, str(path)) == ["bag", "shoe"]
    with pytest.raises(AnnobootError, match="one of them"):
        parse_labels("a,b", str(path))
    with pytest.raises(AnnobootError, match="missing.txt: no such file"):
        parse_labels(None, str(tmp_path / "missing.txt"))
