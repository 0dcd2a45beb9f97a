"""The one caption rule (annoboot.data.captions): txt twins, shard members and titles agree."""

import tarfile

import numpy as np
from PIL import Image

from annoboot.data.captions import caption_from_text, caption_from_txt_twin, clean_caption, sample_caption
from annoboot.data.tools import folder_to_shards


def test_a_caption_is_the_first_non_empty_line_cleaned():
    assert caption_from_text("\n   \n  a_red   bus \nsecond line") == "a red bus"
    assert caption_from_text("") is None and caption_from_text(" \n\t") is None
    assert clean_caption("Untitled") is None and clean_caption("drawing.") is None
    assert clean_caption("a\ntitle  over two lines") == "a title over two lines"  # titles keep every line


def test_txt_twins_shard_members_and_write_shards_read_the_same_caption(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    texts = {"a": "\n  two_sneakers and  a bag\nmore", "b": "untitled", "c": "   "}
    for name, text in texts.items():
        Image.fromarray(np.full((8, 8, 3), 40, np.uint8)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(text)
    twins = {name: caption_from_txt_twin(str(folder / f"{name}.png")) for name in texts}
    assert twins == {"a": "two sneakers and a bag", "b": None, "c": None}
    assert {name: sample_caption({"txt": text.encode()}) for name, text in texts.items()} == twins

    report = folder_to_shards(str(folder), str(tmp_path / "shard-%06d.tar"))
    assert report["with_caption"] == 1
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".txt")}
    # What write-shards packed reads back from the shard as the twin's caption.
    assert [sample_caption({"txt": raw}) for raw in members.values()] == ["two sneakers and a bag"]
