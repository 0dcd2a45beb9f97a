"""annoboot.data.captioned: captioned folders, Tux Paint and Open Clip Art as image-caption sources."""

from pathlib import Path

import pytest
import torch
from helpers import _png_bytes, needs_openclipart, needs_tuxpaint

from annoboot.config import SourceConfig
from annoboot.data import build_source
from annoboot.data.captioned import captioned_folder, openclipart, split_of, tuxpaint
from annoboot.errors import AnnobootError


def test_captioned_folder_pairs_images_with_txt_twins_and_leaves_out_the_rest(tmp_path):
    for category in ("cats", "dogs"):
        (tmp_path / category).mkdir()
        for i in range(20):
            (tmp_path / category / f"{i}.png").write_bytes(_png_bytes((i * 10, 0, 0)))
            if i != 3:  # one image per category without a caption
                (tmp_path / category / f"{i}.txt").write_text(f"\n  a {category[:-1]} number {i}  \nsecond line\n")
    source = captioned_folder(str(tmp_path), split="all")
    assert len(source) == 38 and source.class_names == ["cats", "dogs"]
    i = source.paths.index(str(tmp_path / "dogs" / "7.png"))
    assert source.captions[i] == "a dog number 7" and source.labels[i] == 1
    assert source[i].shape == (3, 10, 12)
    train, test = captioned_folder(str(tmp_path), split="train"), captioned_folder(str(tmp_path), split="test")
    assert len(train) + len(test) == 38 and not set(train.paths) & set(test.paths)
    assert all(split_of(Path(p).relative_to(tmp_path).as_posix()) == "test" for p in test.paths)
    with pytest.raises(AnnobootError, match="split"):
        captioned_folder(str(tmp_path), split="val")


@needs_tuxpaint
def test_tuxpaint_captions_are_english_sentences_with_shared_class_ids():
    train, test = tuxpaint(split="train"), tuxpaint(split="test")
    assert len(train) > 500 and len(test) > 40
    assert train.class_names == test.class_names  # ids agree between splits
    assert all(c and "utf8=" not in c for c in train.captions)
    assert sum(c.endswith(".") for c in train.captions) > 0.8 * len(train)
    assert train[0].dtype == torch.uint8 and train[0].shape[0] == 3


@needs_openclipart
def test_openclipart_captions_use_titles_not_authors_or_collections():
    source = openclipart(split="all")
    assert len(source) > 6000 and len(source.class_names) == 22
    assert all(source.captions)
    assert not any(c.startswith("Open Clip Art Library") for c in source.captions)
    i = next(i for i, p in enumerate(source.paths) if p.endswith("science/provetta_plasma_sangue_a_01.png"))
    assert source.captions[i].startswith("Provetta plasma sangue")  # the title, not the author's name
    assert "gramastar" not in source.captions  # a collection's shared title is replaced by the file's words


def test_missing_package_error_names_the_path_and_the_install_command(tmp_path):
    with pytest.raises(AnnobootError, match="apt-get install .*tuxpaint-stamps-default"):
        build_source(SourceConfig(kind="tuxpaint", root=str(tmp_path / "nowhere")))
